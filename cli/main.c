/* main.c: the `mambabyte` binary; dispatches to its subcommands in the style of git. */
#include <stdio.h>
#include <string.h>

#include "cmd_engine.h"
#include "serve.h"

static const char usage[] =
    "usage: mambabyte <command> [options]   (mambabyte <command> --help for each)\n"
    "  serve      HTTP completion server (OpenAI-compatible and native endpoints)\n"
    "  generate   generate bytes after a prompt\n"
    "  eval       bits per byte of a model on a text file\n"
    "  logits     dump raw float32 logits of every position (parity checks)\n"
    "  loadgen    load client: latency and throughput of a completions endpoint, in bytes\n";

int main(int argc, char **argv) {
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {{"serve", srv_main},
                {"generate", cmd_generate},
                {"eval", cmd_eval},
                {"logits", cmd_logits},
                {"loadgen", cmd_loadgen}};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "mambabyte: unknown command '%s'\n%s", argv[1], usage);
    return 2;
}
