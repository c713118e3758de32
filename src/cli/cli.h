/* cli.h - the mhub command's subcommands and flag-parsing helpers.
 *
 * Exit codes shared by every subcommand: 0 success, 1 a run that failed
 * (the library returned an error), 2 bad usage (unknown flag, bad value). */
#ifndef MHUB_CLI_H
#define MHUB_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "mhub/ddp.h"

#define MHUB_EXIT_OK 0
#define MHUB_EXIT_FAILED 1
#define MHUB_EXIT_USAGE 2

/* Subcommands: argv[0] is the subcommand's name. */
int mhub_cli_layout(int argc, char **argv);
int mhub_cli_train(int argc, char **argv);
int mhub_cli_info(int argc, char **argv);
/* `mhub eval`: a GPT's mean next-token loss on a token file (eval.c). */
int mhub_cli_eval(int argc, char **argv);
/* `mhub convert --to hf|mhub SRC DST` (convert.c). */
int mhub_cli_convert(int argc, char **argv);
/* `mhub train --config FILE` (train_gpt.c). */
int mhub_cli_train_config(int argc, char **argv);

/* Parse `text` as the value of `flag`: a whole decimal integer in
 * [lo, hi]. On failure print "mhub <cmd>: <flag>: ..." to stderr and
 * return false. */
bool cli_parse_long(const char *cmd, const char *flag, const char *text, long lo, long hi,
                    long *out);
bool cli_parse_int(const char *cmd, const char *flag, const char *text, int lo, int hi,
                   int *out);
/* A finite number in [lo, hi]. */
bool cli_parse_double(const char *cmd, const char *flag, const char *text, double lo,
                      double hi, double *out);
/* The value after a flag: argv[*i + 1], advancing *i; NULL (with a
 * message) when the flag is last. Also accepts --flag=value forms: pass
 * the part after '=' as `inline_value`. */
const char *cli_flag_value(const char *cmd, int argc, char **argv, int *i,
                           const char *inline_value);
/* Split "--flag=value": returns true and points *value past '=' if arg
 * has the form, writing the flag name (without value) into name[cap]. */
bool cli_split_flag(const char *arg, char *name, int cap, const char **value);

/* Read a --ddp-config FILE (a JSON object of DDP settings, at most 64
 * KiB) on top of *cfg; errors name the file and the key. */
mhub_status cli_read_ddp_config(const char *path, mhub_ddp_config *cfg);

/* A library error message without its leading "mhub_function: ". */
const char *cli_error_text(const char *msg);

#endif
