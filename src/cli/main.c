/* main.c - the mhub command: dispatch to a subcommand. */
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "src/cli/cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub <command> [options]\n"
            "\n"
            "commands:\n"
            "  train    train a model (mhub train --help)\n"
            "  convert  convert a GPT checkpoint between Hugging Face's and mhub's layouts\n"
            "  eval     a GPT's mean next-token loss on a token file (mhub eval --help)\n"
            "  info     a model's parameters and per-rank memory, from its config (mhub info --help)\n"
            "  layout   show which ranks form each parallel group (mhub layout --help)\n"
            "\n"
            "  mhub --version   print the version\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return MHUB_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return MHUB_EXIT_OK;
    }
    if (!strcmp(cmd, "--version")) {
        printf("mhub %s\n", PACKAGE_VERSION);
        return MHUB_EXIT_OK;
    }
    if (!strcmp(cmd, "train"))
        return mhub_cli_train(argc - 1, argv + 1);
    if (!strcmp(cmd, "convert"))
        return mhub_cli_convert(argc - 1, argv + 1);
    if (!strcmp(cmd, "eval"))
        return mhub_cli_eval(argc - 1, argv + 1);
    if (!strcmp(cmd, "info"))
        return mhub_cli_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "layout"))
        return mhub_cli_layout(argc - 1, argv + 1);
    fprintf(stderr, "mhub: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return MHUB_EXIT_USAGE;
}
