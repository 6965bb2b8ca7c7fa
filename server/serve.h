/* serve.h: `mambabyte serve`, the HTTP completion server. */
#ifndef SERVE_H
#define SERVE_H

/* argv[0] is "serve"; the rest are flags (see cfg.h). Returns the exit status. */
int srv_main(int argc, char **argv);

#endif
