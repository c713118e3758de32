/* args.c - strict number parsing for command-line flags. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/ddp.h"
#include "src/cli/cli.h"
#include "src/fileio.h"

bool cli_parse_long(const char *cmd, const char *flag, const char *text, long lo, long hi,
                    long *out)
{
    if (!text || !*text) {
        fprintf(stderr, "mhub %s: %s: empty value, expected an integer\n", cmd, flag);
        return false;
    }
    errno = 0;
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (*end != '\0' || end == text) {
        fprintf(stderr, "mhub %s: %s: '%s' is not an integer\n", cmd, flag, text);
        return false;
    }
    if (errno == ERANGE || v < lo || v > hi) {
        fprintf(stderr, "mhub %s: %s: %s is out of range [%ld, %ld]\n", cmd, flag, text, lo,
                hi);
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_int(const char *cmd, const char *flag, const char *text, int lo, int hi,
                   int *out)
{
    long v;
    if (!cli_parse_long(cmd, flag, text, lo, hi, &v))
        return false;
    *out = (int)v;
    return true;
}

bool cli_parse_double(const char *cmd, const char *flag, const char *text, double lo,
                      double hi, double *out)
{
    if (!text || !*text) {
        fprintf(stderr, "mhub %s: %s: empty value, expected a number\n", cmd, flag);
        return false;
    }
    errno = 0;
    char *end = NULL;
    double v = strtod(text, &end);
    if (*end != '\0' || end == text || !isfinite(v)) {
        fprintf(stderr, "mhub %s: %s: '%s' is not a finite number\n", cmd, flag, text);
        return false;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "mhub %s: %s: %s is out of range [%g, %g]\n", cmd, flag, text, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

bool cli_split_flag(const char *arg, char *name, int cap, const char **value)
{
    const char *eq = strchr(arg, '=');
    if (!eq || strncmp(arg, "--", 2) != 0)
        return false;
    int len = (int)(eq - arg);
    if (len >= cap)
        len = cap - 1;
    memcpy(name, arg, (size_t)len);
    name[len] = '\0';
    *value = eq + 1;
    return true;
}

const char *cli_flag_value(const char *cmd, int argc, char **argv, int *i,
                           const char *inline_value)
{
    if (inline_value)
        return inline_value;
    if (*i + 1 >= argc) {
        fprintf(stderr, "mhub %s: %s needs a value\n", cmd, argv[*i]);
        return NULL;
    }
    *i += 1;
    return argv[*i];
}

/* The library prefixes its messages with the function's name; the user
 * typed flags, not function calls, so drop it. */
const char *cli_error_text(const char *msg)
{
    const char *colon = strstr(msg, ": ");
    if (strncmp(msg, "mhub_", 5) == 0 && colon)
        return colon + 2;
    return msg;
}

mhub_status cli_read_ddp_config(const char *path, mhub_ddp_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    MHUB_TRY(mhub_file_read_all(path, 1 << 16, "a ddp config", &text, &len));
    mhub_status s = mhub_ddp_config_from_json(text, path, cfg);
    free(text);
    return s;
}
