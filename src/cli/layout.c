/* layout.c - `mhub layout`: show which ranks form each parallel group.
 *
 * The command computes the same layout that mhub_parallel_create builds
 * (and Megatron-Core's initialize_model_parallel before it) without
 * starting MPI, so one can check a configuration on a laptop before asking
 * a cluster for it. The text view is meant for learning: the sizes and how
 * dp follows from them, the formula that turns coordinates into a rank, a
 * row of coordinates per rank and every group kind as its lists of ranks.
 * Worlds too large to read in full are abbreviated; --json always prints
 * the complete layout. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/parallel.h"
#include "src/cli/cli.h"

#define CMD "layout"
/* Beyond this many ranks the text view abbreviates rows and groups. */
#define FULL_VIEW_MAX 64
/* Above the largest clusters trained on today, yet small enough that
 * --json (a cJSON tree of ~1.6 KB per rank) stays near 200 MB. */
#define MAX_WORLD (1 << 17)
#define LINE_WIDTH 100

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub layout --world N [--tp T] [--pp P] [--cp C] [--ep E] [--etp E]\n"
            "                   [--vp V] [--order STR] [--json]\n"
            "\n"
            "Show which ranks form each parallel group, as Megatron-Core's\n"
            "initialize_model_parallel builds them. Nothing is started: no MPI, no ranks.\n"
            "\n"
            "  --world N     number of ranks, up to 131072 (required)\n"
            "  --tp T        tensor-parallel size (default 1)\n"
            "  --pp P        pipeline-parallel stages (default 1)\n"
            "  --cp C        context-parallel size (default 1)\n"
            "  --ep E        expert-parallel size (default 1)\n"
            "  --etp E       expert tensor-parallel size (default: the --tp value)\n"
            "  --vp V        virtual pipeline stages per rank (needs --pp > 1)\n"
            "  --order STR   rank order, leftmost axis varying fastest\n"
            "                (default tp-cp-ep-dp-pp)\n"
            "  --json        print the whole layout as one line of JSON\n"
            "  --help        print this help\n"
            "\n"
            "dp = world / (tp*cp*pp); expert dp (edp) = world / (etp*ep*pp).\n"
            "Flags also take the form --flag=value.\n");
}

/* ---- parsing ------------------------------------------------------------- */

typedef struct layout_args {
    int world;
    mhub_parallel_sizes sizes;
    bool json;
    bool help;
} layout_args;

typedef struct int_flag {
    const char *name;
    int *value;
    bool seen;
} int_flag;

static bool usage_error(void)
{
    fputc('\n', stderr);
    usage(stderr);
    return false;
}

static bool parse_switch(const char *flag, const char *inline_value, bool *target)
{
    if (inline_value) {
        fprintf(stderr, "mhub " CMD ": %s takes no value\n", flag);
        return usage_error();
    }
    if (*target) {
        fprintf(stderr, "mhub " CMD ": %s is given twice\n", flag);
        return usage_error();
    }
    *target = true;
    return true;
}

static bool parse_int_flag(int_flag *f, int argc, char **argv, int *i,
                           const char *inline_value)
{
    if (f->seen) {
        fprintf(stderr, "mhub " CMD ": %s is given twice\n", f->name);
        return usage_error();
    }
    f->seen = true;
    const char *text = cli_flag_value(CMD, argc, argv, i, inline_value);
    if (!text || !cli_parse_int(CMD, f->name, text, 1, MAX_WORLD, f->value))
        return usage_error();
    return true;
}

static bool parse_order_flag(layout_args *a, int argc, char **argv, int *i,
                             const char *inline_value)
{
    if (a->sizes.order) {
        fprintf(stderr, "mhub " CMD ": --order is given twice\n");
        return usage_error();
    }
    a->sizes.order = cli_flag_value(CMD, argc, argv, i, inline_value);
    return a->sizes.order ? true : usage_error();
}

static bool parse_args(int argc, char **argv, layout_args *a)
{
    int_flag flags[] = {
        {"--world", &a->world, false}, {"--tp", &a->sizes.tp, false},
        {"--pp", &a->sizes.pp, false}, {"--cp", &a->sizes.cp, false},
        {"--ep", &a->sizes.ep, false}, {"--etp", &a->sizes.etp, false},
        {"--vp", &a->sizes.vp, false},
    };
    const size_t nflags = sizeof flags / sizeof flags[0];
    for (int i = 1; i < argc; i++) {
        char name[32];
        const char *inline_value = NULL;
        const char *flag = argv[i];
        if (cli_split_flag(argv[i], name, (int)sizeof name, &inline_value))
            flag = name;
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            a->help = true;
            return true;
        }
        if (!strcmp(flag, "--json")) {
            if (!parse_switch(flag, inline_value, &a->json))
                return false;
            continue;
        }
        if (!strcmp(flag, "--order")) {
            if (!parse_order_flag(a, argc, argv, &i, inline_value))
                return false;
            continue;
        }
        int_flag *f = NULL;
        for (size_t k = 0; k < nflags && !f; k++)
            if (!strcmp(flag, flags[k].name))
                f = &flags[k];
        if (!f) {
            fprintf(stderr, "mhub " CMD ": %s '%s'\n",
                    argv[i][0] == '-' ? "unknown option" : "unexpected argument", argv[i]);
            return usage_error();
        }
        if (!parse_int_flag(f, argc, argv, &i, inline_value))
            return false;
    }
    if (!flags[0].seen) {
        fprintf(stderr, "mhub " CMD ": --world is required\n");
        return usage_error();
    }
    return true;
}

/* ---- the text view -------------------------------------------------------- */

typedef struct view {
    const mhub_layout *l;
    const mhub_parallel_sizes *s;
    int world, dp, edp;
    int width;   /* digits of the largest rank */
    bool moe;    /* expert groups differ from the dense ones */
    bool full;   /* small enough to print everything */
} view;

static int digits(int v)
{
    int n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* The size of an axis of the order string in the dense (or expert)
 * generator; `name` is "tp", "cp", "ep", "dp" or "pp". */
static int axis_size(const view *v, const char *name, bool expert, const char **label)
{
    static const struct { const char *axis, *dense, *expert; } names[] = {
        {"tp", "tp", "etp"}, {"cp", "cp", NULL}, {"ep", NULL, "ep"},
        {"dp", "dp", "edp"}, {"pp", "pp", "pp"},
    };
    const int dense_size[] = {v->s->tp, v->s->cp, 1, v->dp, v->s->pp};
    const int expert_size[] = {v->s->etp, 1, v->s->ep, v->edp, v->s->pp};
    for (int i = 0; i < 5; i++)
        if (!strncmp(name, names[i].axis, 2)) {
            *label = expert ? names[i].expert : names[i].dense;
            return expert ? expert_size[i] : dense_size[i];
        }
    *label = NULL;
    return 1;
}

typedef struct term {
    const char *label;
    int size;
} term;

/* The axes of the resolved order that one generator has, in order. */
static int order_terms(const view *v, bool expert, term out[5])
{
    int n = 0;
    for (const char *p = v->s->order; *p && n < 5;) {
        const char *label;
        int size = axis_size(v, p, expert, &label);
        if (label)
            out[n++] = (term){label, size};
        p += strcspn(p, "-");
        p += *p == '-';
    }
    return n;
}

/* "rank = tp + 2*(cp + 1*(dp + 2*pp))": each axis counts in units of the
 * product of the sizes to its left. */
static void print_formula(const view *v, bool expert)
{
    term t[5];
    int n = order_terms(v, expert, t);
    printf("rank = ");
    for (int i = 0; i < n; i++) {
        printf("%s", t[i].label);
        if (i + 1 < n)
            printf(" + %d*%s", t[i].size, i + 2 < n ? "(" : "");
    }
    for (int i = 2; i < n; i++)
        putchar(')');
}

static void print_header(const view *v)
{
    const mhub_parallel_sizes *s = v->s;
    printf("world %d = tp %d x cp %d x dp %d x pp %d   (dp = %d / (tp*cp*pp))\n", v->world,
           s->tp, s->cp, v->dp, s->pp, v->world);
    printf("experts: world %d = etp %d x ep %d x edp %d x pp %d   (edp = %d / (etp*ep*pp))\n",
           v->world, s->etp, s->ep, v->edp, s->pp, v->world);
    if (s->vp > 0)
        printf("virtual pipeline: vp %d, so %d model chunks; stage s runs chunks s, s+%d, ...\n",
               s->vp, s->vp * s->pp, s->pp);
    printf("order %s: the leftmost axis varies fastest, so\n  ", s->order);
    print_formula(v, false);
    if (v->moe) {
        printf("\n  ");
        print_formula(v, true);
        printf("   (expert layers)");
    }
    putchar('\n');
}

static const char *stage_name(int stage, int stages)
{
    if (stages == 1)
        return "first+last";
    if (stage == 0)
        return "first";
    return stage == stages - 1 ? "last" : "middle";
}

/* Rows are built in a buffer so that a padded last column leaves no
 * trailing blanks. */
typedef struct line {
    char text[256];
    size_t used;
} line;

static void add(line *ln, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void add(line *ln, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(ln->text + ln->used, sizeof ln->text - ln->used, fmt, ap);
    va_end(ap);
    if (n > 0)
        ln->used += (size_t)n;
    if (ln->used >= sizeof ln->text)
        ln->used = sizeof ln->text - 1;
}

static void print_line(line *ln)
{
    while (ln->used > 0 && ln->text[ln->used - 1] == ' ')
        ln->used--;
    ln->text[ln->used] = '\0';
    puts(ln->text);
}

static int column_width(const view *v) { return v->width > 3 ? v->width : 3; }

static void print_row(const view *v, int rank)
{
    mhub_rank_coords c;
    if (mhub_layout_coords(v->l, rank, &c) != MHUB_OK)
        return;
    int w = column_width(v);
    line ln = {.used = 0};
    add(&ln, "%*d %*d %*d %*d %*d  %-10s", w + 1, rank, w, c.tp, w, c.cp, w, c.dp, w, c.pp,
        stage_name(c.pp, v->s->pp));
    if (v->moe)
        add(&ln, " %*d %*d %*d", w, c.etp, w, c.ep, w, c.edp);
    if (v->s->vp > 0) {
        add(&ln, " ");
        for (int k = 0; k < v->s->vp; k++)
            add(&ln, " %d", c.pp + k * v->s->pp);
    }
    print_line(&ln);
}

static void print_rows(const view *v)
{
    int w = column_width(v);
    line ln = {.used = 0};
    add(&ln, "%*s %*s %*s %*s %*s  %-10s", w + 1, "rank", w, "tp", w, "cp", w, "dp", w, "pp",
        "stage");
    if (v->moe)
        add(&ln, " %*s %*s %*s", w, "etp", w, "ep", w, "edp");
    if (v->s->vp > 0)
        add(&ln, "  chunks");
    putchar('\n');
    print_line(&ln);
    int head = v->full ? v->world : 32, tail = v->full ? 0 : 8;
    for (int r = 0; r < head; r++)
        print_row(v, r);
    if (tail > 0) {
        printf("%*s  (ranks %d..%d not shown)\n", w + 1, "...", head, v->world - tail - 1);
        for (int r = v->world - tail; r < v->world; r++)
            print_row(v, r);
    }
}

/* One group as "[a b c]"; long groups of a large world are cut to their
 * first and last ranks around "...". */
static void format_group(const view *v, mhub_group_kind kind, int g, char *buf, size_t cap)
{
    const int *r = mhub_layout_group_ranks(v->l, kind, g);
    int n = mhub_layout_group_size(v->l, kind, g);
    bool cut = !v->full && n > 12;
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int j = 0; j < n && used < cap; j++) {
        if (cut && j == 6) {
            used += (size_t)snprintf(buf + used, cap - used, " ...");
            j = n - 3;
            continue;
        }
        used += (size_t)snprintf(buf + used, cap - used, "%s%d", j ? " " : "", r[j]);
    }
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
}

static void print_group_line(const view *v, mhub_group_kind kind)
{
    int count = mhub_layout_group_count(v->l, kind);
    int size = mhub_layout_group_size(v->l, kind, 0);
    char shape[32];
    snprintf(shape, sizeof shape, "%dx%d", count, size);
    int indent = printf("  %-19s %-8s", mhub_group_name(kind), shape);
    int col = indent, shown = v->full ? count : (count < 8 ? count : 8);
    char buf[256];
    for (int g = 0; g < shown; g++) {
        format_group(v, kind, g, buf, sizeof buf);
        int len = (int)strlen(buf);
        if (g > 0 && col + 1 + len > LINE_WIDTH) {
            printf("\n%*s", indent, "");
            col = indent;
        }
        col += printf("%s%s", g > 0 && col > indent ? " " : "", buf);
    }
    if (shown < count)
        printf(" ... (%d more groups)", count - shown);
    putchar('\n');
}

static void print_groups(const view *v)
{
    printf("\ngroups (each [...] is one communicator; 4x2 means 4 groups of 2 ranks):\n");
    for (int k = 0; k < MHUB_GROUP_COUNT; k++)
        print_group_line(v, (mhub_group_kind)k);
    printf("\nmp = tp x pp (model parallel); embedding = first and last stage of each pp "
           "group,\nposition-embedding = its first stage; ep, etp, edp, tp-ep and tp-ep-pp "
           "come from\nthe expert generator (etp, ep, edp, pp), the rest from the dense one "
           "(tp, cp, dp, pp).\n");
}

static void print_text(const mhub_layout *l)
{
    view v = {.l = l, .s = mhub_layout_sizes(l), .world = mhub_layout_world(l),
              .dp = mhub_layout_dp(l), .edp = mhub_layout_edp(l)};
    v.width = digits(v.world - 1);
    v.moe = v.s->ep > 1 || v.s->etp != v.s->tp;
    v.full = v.world <= FULL_VIEW_MAX;
    print_header(&v);
    print_rows(&v);
    print_groups(&v);
}

/* ---- the command ---------------------------------------------------------- */

int mhub_cli_layout(int argc, char **argv)
{
    layout_args a = {0};
    if (!parse_args(argc, argv, &a))
        return MHUB_EXIT_USAGE;
    if (a.help) {
        usage(stdout);
        return MHUB_EXIT_OK;
    }
    mhub_layout *l = NULL;
    mhub_status st = mhub_layout_create(a.world, &a.sizes, &l);
    if (st == MHUB_ERR_INVALID_ARG) {
        fprintf(stderr, "mhub " CMD ": %s\n", cli_error_text(mhub_last_error()));
        usage_error();
        return MHUB_EXIT_USAGE;
    }
    if (st != MHUB_OK) {
        fprintf(stderr, "mhub " CMD ": %s\n", mhub_last_error());
        return MHUB_EXIT_FAILED;
    }
    int rc = MHUB_EXIT_OK;
    if (a.json) {
        char *text = NULL;
        if (mhub_layout_to_json(l, &text) == MHUB_OK) {
            printf("%s\n", text);
            free(text);
        } else {
            fprintf(stderr, "mhub " CMD ": %s\n", mhub_last_error());
            rc = MHUB_EXIT_FAILED;
        }
    } else {
        print_text(l);
    }
    mhub_layout_free(l);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "mhub " CMD ": could not write the output\n");
        rc = MHUB_EXIT_FAILED;
    }
    return rc;
}
