/* cmd_engine.h: the subcommands other than serve, one file each (cmd_generate.c, cmd_logits.c,
 * cmd_eval.c drive the engine; cmd_loadgen.c is the load client). Each takes the subcommand's own
 * argv (argv[0] is its name) and returns the process exit status. */
#ifndef CMD_ENGINE_H
#define CMD_ENGINE_H

int cmd_generate(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_loadgen(int argc, char **argv);

#endif
