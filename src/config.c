/* config.c — the gateway's configuration, driven by the key table of config_keys.c
 * (section, name, type, field, default, help, limits): config_defaults, INI parsing
 * (libinih), WSGATE_<SECTION>_<KEY> environment overrides, validation (each value, then
 * the rules between keys) and config_write_defaults (the text of gateway.conf.example).
 * Does NOT define keys (config_keys.c), open sockets or brokers, resolve names or check
 * that files named by values exist: it only checks a value's form and range.
 * Thread: main thread at start-up, before the loop and any other thread starts.
 *
 * Errors go to the caller's FILE, one line each, all of them (not only the first):
 *   FILE:LINE: key 'section.name': reason
 *   env WSGATE_SECTION_NAME: key 'section.name': reason
 * Values of secret keys (URLs that may carry a password, tokens) are never echoed.
 *
 * libinih as Debian builds it (no INI_HANDLER_LINENO, INI_MAX_LINE 200) does not pass
 * line numbers to the handler and cuts lines at 200 bytes, so the file is read through
 * cfg_file_gets(), which counts lines, refuses over-long lines instead of letting them be
 * cut, reports syntax errors itself (inih only reports the first one) and strips leading
 * blanks so an indented "key = value" is an ordinary key, never a continuation of the
 * previous value. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config_priv.h"
#include "util.h"

/* Longest line (without its line ending) accepted in a config file. libinih reads at
 * most INI_MAX_LINE - 1 = 199 bytes including "\r\n"; config_write_defaults states it. */
#define CFG_LINE_MAX 197

/* --- values --- */

/* "64m", "8k", "30s", "1h", ... : v of the key's unit in the shortest exact spelling. */
static void cfg_num_format(enum cfg_type type, uint64_t v, char *buf, size_t len)
{
    unsigned long long u = v;

    if (type == CFG_SIZE) {
        if (u != 0 && u % MIB == 0)
            snprintf(buf, len, "%llum", u / MIB);
        else if (u != 0 && u % KIB == 0)
            snprintf(buf, len, "%lluk", u / KIB);
        else
            snprintf(buf, len, "%llu", u);
        return;
    }
    if (type == CFG_SEC)
        u *= SEC_MS;
    if (type == CFG_MS || type == CFG_SEC) {
        if (u == 0)
            snprintf(buf, len, "0");
        else if (u % HOUR_MS == 0)
            snprintf(buf, len, "%lluh", u / HOUR_MS);
        else if (u % MIN_MS == 0)
            snprintf(buf, len, "%llum", u / MIN_MS);
        else if (u % SEC_MS == 0)
            snprintf(buf, len, "%llus", u / SEC_MS);
        else
            snprintf(buf, len, "%llums", u);
        return;
    }
    snprintf(buf, len, "%llu", u);
}

/* What a value of this key looks like, for "expected ..." reasons. */
static const char *cfg_type_expect(enum cfg_type type)
{
    switch (type) {
    case CFG_U32:
        return "a whole number";
    case CFG_SIZE:
        return "a size such as 512, 64k or 1m";
    case CFG_MS:
        return "a duration such as 250ms, 30s, 5m or 1h";
    case CFG_SEC:
        return "a duration of whole seconds such as 1s, 30s or 5m";
    case CFG_BOOL:
        return "on/off, true/false, yes/no or 1/0";
    default:
        return "a value";
    }
}

/* "a, b, c" */
static void cfg_choices_format(const char *const *choices, const char *sep, char *buf, size_t len)
{
    size_t n = 0;

    buf[0] = '\0';
    for (size_t i = 0; choices[i] != NULL && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? sep : "", choices[i]);
}

static int cfg_bool_parse(const char *v, int *out)
{
    static const char *const yes[] = {"on", "true", "yes", "1"};
    static const char *const no[] = {"off", "false", "no", "0"};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* v quoted for an error message: at most 64 bytes, control bytes as '?'; "" for secrets. */
static void cfg_value_quote(const struct cfg_key *k, const char *v, char *buf, size_t len)
{
    size_t n = 0, i;

    if (k != NULL && (k->flags & CFG_SECRET)) {
        buf[0] = '\0';
        return;
    }
    n += (size_t)snprintf(buf, len, " (got '");
    for (i = 0; v[i] != '\0' && i < 64 && n + 5 < len; i++)
        buf[n++] = (unsigned char)v[i] < 0x20 || v[i] == 0x7f ? '?' : v[i];
    snprintf(buf + n, len - n, "%s')", v[i] != '\0' ? "..." : "");
}

/* Parse v for key k into cfg. 0, or -1 with the reason in why. The one place a value
 * becomes a field: defaults, the file and the environment all come through here. */
static int cfg_value_set(struct config *cfg, const struct cfg_key *k, const char *v, char *why,
                         size_t whylen)
{
    char *field = (char *)cfg + k->offset;
    char got[96], lo[32], hi[32], list[128];
    uint64_t n = 0;

    cfg_value_quote(k, v, got, sizeof got);
    switch (k->type) {
    case CFG_STR:
    case CFG_CHOICE: {
        size_t len = strlen(v);
        if (k->type == CFG_CHOICE) {
            size_t i;
            for (i = 0; k->choices[i] != NULL && strcasecmp(v, k->choices[i]) != 0; i++)
                ;
            if (k->choices[i] == NULL) {
                cfg_choices_format(k->choices, ", ", list, sizeof list);
                snprintf(why, whylen, "expected one of %s%s", list, got);
                return -1;
            }
            v = k->choices[i];
            len = strlen(v);
        }
        if (len >= k->size) {
            snprintf(why, whylen, "value too long: %zu bytes, at most %zu", len, k->size - 1);
            return -1;
        }
        if (k->check != NULL && k->check(v, why, whylen) < 0) {
            size_t used = strlen(why);
            snprintf(why + used, whylen - used, "%s", got);
            return -1;
        }
        memset(field, 0, k->size);
        memcpy(field, v, len);
        return 0;
    }
    case CFG_ENUM: {
        int i;
        for (i = 0; k->choices[i] != NULL && strcasecmp(v, k->choices[i]) != 0; i++)
            ;
        if (k->choices[i] == NULL) {
            cfg_choices_format(k->choices, ", ", list, sizeof list);
            snprintf(why, whylen, "expected one of %s%s", list, got);
            return -1;
        }
        memcpy(field, &i, sizeof i);
        return 0;
    }
    case CFG_BOOL: {
        int b;
        if (cfg_bool_parse(v, &b) < 0) {
            snprintf(why, whylen, "expected %s%s", cfg_type_expect(k->type), got);
            return -1;
        }
        memcpy(field, &b, sizeof b);
        return 0;
    }
    case CFG_U32:
    case CFG_SIZE:
    case CFG_MS:
    case CFG_SEC: {
        int rc;
        if (k->type == CFG_U32) /* digits only: a bare size is the same number */
            rc = v[strspn(v, "0123456789")] == '\0' ? parse_size(v, &n) : -1;
        else if (k->type == CFG_SIZE)
            rc = parse_size(v, &n);
        else
            rc = parse_duration_ms(v, &n);
        if (rc < 0) {
            snprintf(why, whylen, "expected %s%s", cfg_type_expect(k->type), got);
            return -1;
        }
        if (k->type == CFG_SEC) {
            if (n % SEC_MS != 0) {
                snprintf(why, whylen, "expected %s%s", cfg_type_expect(k->type), got);
                return -1;
            }
            n /= SEC_MS;
        }
        if (n < k->min || n > k->max) {
            cfg_num_format(k->type, k->min, lo, sizeof lo);
            cfg_num_format(k->type, k->max, hi, sizeof hi);
            snprintf(why, whylen, "out of range: must be between %s and %s%s", lo, hi, got);
            return -1;
        }
        if (k->size == sizeof(uint32_t)) {
            uint32_t u = (uint32_t)n;
            memcpy(field, &u, sizeof u);
        } else {
            memcpy(field, &n, sizeof n);
        }
        return 0;
    }
    }
    snprintf(why, whylen, "unsupported key type");
    return -1;
}

/* --- lookup --- */

static const struct cfg_key *cfg_key_find(const char *section, const char *name)
{
    for (size_t i = 0; i < cfg__nkeys; i++) {
        if (strcmp(cfg__keys[i].section, section) == 0 && strcmp(cfg__keys[i].name, name) == 0)
            return &cfg__keys[i];
    }
    return NULL;
}

static int cfg_section_known(const char *section)
{
    for (size_t i = 0; i < cfg__nsections; i++) {
        if (strcmp(cfg__sections[i], section) == 0)
            return 1;
    }
    return 0;
}

/* "WSGATE_SECTION_NAME" for k into buf. */
static void cfg_env_name(const struct cfg_key *k, char *buf, size_t len)
{
    int n = snprintf(buf, len, "WSGATE_%s_%s", k->section, k->name);
    for (int i = 0; i < n && (size_t)i < len; i++)
        buf[i] = (char)toupper((unsigned char)buf[i]);
}

/* --- loading --- */

enum cfg_src { CFG_SRC_DEFAULT = 0, CFG_SRC_FILE, CFG_SRC_ENV };

struct cfg_origin {
    enum cfg_src src; /* where the key's current value came from */
    int line;         /* CFG_SRC_FILE: its line */
};

struct cfg_load {
    struct config cfg;          /* being built; copied out only when valid */
    const char *path;           /* borrowed: the config file, or NULL */
    FILE *err;                  /* borrowed: where error lines go */
    int lineno;                 /* file line being parsed (counted by the reader) */
    int errors;                 /* error lines written */
    int bad_section;            /* after a broken "[..." line: skip its keys */
    char section[64];           /* current section as the reader saw it */
    struct cfg_origin origin[]; /* cfg__nkeys: per key, indexed like cfg__keys */
};

/* One error line: "<where>: key 'section.name': reason". at == NULL: the current file
 * line; label NULL: a line-level error without a key. */
static void cfg_error(struct cfg_load *ld, const struct cfg_key *k, const struct cfg_origin *at,
                      const char *label, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void cfg_error(struct cfg_load *ld, const struct cfg_key *k, const struct cfg_origin *at,
                      const char *label, const char *fmt, ...)
{
    char line[1024], env[96];
    int n;
    va_list ap;

    if (at != NULL && at->src == CFG_SRC_ENV) {
        cfg_env_name(k, env, sizeof env);
        n = snprintf(line, sizeof line, "env %s: ", env);
    } else if (at != NULL && at->src == CFG_SRC_DEFAULT) {
        n = snprintf(line, sizeof line, "defaults: ");
    } else {
        n = snprintf(line, sizeof line, "%s:%d: ", ld->path, at != NULL ? at->line : ld->lineno);
    }
    if (label != NULL)
        n += snprintf(line + n, sizeof line - (size_t)n, "key '%s': ", label);
    else if (k != NULL)
        n += snprintf(line + n, sizeof line - (size_t)n, "key '%s.%s': ", k->section, k->name);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(ld->err, "%s\n", line);
    ld->errors++;
}

/* Where an inline comment (';' after a blank) or one of chars starts in s; like inih's
 * find_chars_or_comment, so both agree on where a value ends. */
static const char *cfg_find_chars_or_comment(const char *s, const char *chars)
{
    int was_space = 0;

    while (*s && (chars == NULL || strchr(chars, *s) == NULL) && !(was_space && *s == ';')) {
        was_space = isspace((unsigned char)*s);
        s++;
    }
    return s;
}

struct cfg_file {
    FILE *f;             /* borrowed: opened and closed by config_load */
    char *buf;           /* owned: getline buffer, freed by config_load */
    size_t cap;          /* of buf */
    struct cfg_load *ld; /* borrowed */
};

/* For an over-long line: name the key it sets if that can be seen, and its variable. */
static void cfg_long_line_report(struct cfg_load *ld, const char *s, size_t len, size_t limit)
{
    char name[64], env[96];
    const char *eq = memchr(s, '=', len);
    const struct cfg_key *k = NULL;

    if (eq != NULL && !ld->bad_section) {
        size_t n = (size_t)(eq - s);
        while (n > 0 && isspace((unsigned char)s[n - 1]))
            n--;
        if (n < sizeof name) {
            memcpy(name, s, n);
            name[n] = '\0';
            k = cfg_key_find(ld->section, name);
        }
    }
    if (k != NULL) {
        cfg_env_name(k, env, sizeof env);
        cfg_error(ld, k, NULL, NULL,
                  "line is %zu characters, over the %zu a config file line may have; "
                  "set this value in the environment (%s) instead",
                  len, limit, env);
    } else {
        cfg_error(ld, NULL, NULL, NULL,
                  "line is %zu characters, over the %zu a config file line may have", len, limit);
    }
}

/* ini_reader: fgets-like, one whole line per call, counting lines. Lines inih would
 * mangle or reject are reported here and handed to inih as an empty line. */
static char *cfg_file_gets(char *str, int num, void *stream)
{
    struct cfg_file *cf = stream;
    struct cfg_load *ld = cf->ld;
    size_t limit = num > 3 && (size_t)(num - 3) < CFG_LINE_MAX ? (size_t)(num - 3) : CFG_LINE_MAX;
    ssize_t got = getline(&cf->buf, &cf->cap, cf->f);

    if (got < 0 || num < 2)
        return NULL;
    ld->lineno++;
    char *s = cf->buf;
    size_t len = (size_t)got;
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    s[len] = '\0';
    strcpy(str, "\n");
    if (memchr(s, '\0', len) != NULL) {
        cfg_error(ld, NULL, NULL, NULL, "line contains a NUL byte");
        return str;
    }
    if (len > limit) {
        cfg_long_line_report(ld, s, len, limit);
        return str;
    }
    if (ld->lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        s += 3; /* UTF-8 byte order mark */
        len -= 3;
    }
    while (isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        s[--len] = '\0';

    if (s[0] == '\0' || s[0] == ';' || s[0] == '#') {
        /* blank or comment: nothing for inih to do */
    } else if (s[0] == '[') {
        const char *end = cfg_find_chars_or_comment(s + 1, "]");
        const char *after = end[0] == ']' ? end + 1 : end;
        while (isspace((unsigned char)*after))
            after++;
        if (end[0] != ']' || (after[0] != '\0' && after[0] != ';')) {
            cfg_error(ld, NULL, NULL, NULL, "syntax error: expected '[section]'");
            ld->bad_section = 1;
            return str;
        }
        size_t n = (size_t)(end - s - 1);
        if (n >= sizeof ld->section)
            n = sizeof ld->section - 1;
        memcpy(ld->section, s + 1, n);
        ld->section[n] = '\0';
        ld->bad_section = 0;
    } else {
        const char *sep = cfg_find_chars_or_comment(s, "=:");
        if ((*sep != '=' && *sep != ':') || sep == s) {
            cfg_error(ld, NULL, NULL, NULL, "syntax error: expected 'key = value'");
            return str;
        }
    }
    memcpy(str, s, len);
    memcpy(str + len, "\n", 2);
    return str;
}

/* ini_handler: one "name = value" of the file. Always 1: errors are reported here. */
static int cfg_on_pair(void *user, const char *section, const char *name, const char *value)
{
    struct cfg_load *ld = user;
    char label[160], why[512];

    if (ld->bad_section)
        return 1;
    snprintf(label, sizeof label, "%s%s%s", section, section[0] ? "." : "", name);
    if (section[0] == '\0') {
        cfg_error(ld, NULL, NULL, label, "key outside any [section]");
        return 1;
    }
    const struct cfg_key *k = cfg_key_find(section, name);
    if (k == NULL) {
        if (cfg_section_known(section))
            cfg_error(ld, NULL, NULL, label, "unknown key");
        else
            cfg_error(ld, NULL, NULL, label, "unknown section '%s'", section);
        return 1;
    }
    struct cfg_origin *o = &ld->origin[k - cfg__keys];
    if (o->src == CFG_SRC_FILE) {
        cfg_error(ld, k, NULL, NULL, "set twice (first on line %d)", o->line);
        return 1;
    }
    o->src = CFG_SRC_FILE;
    o->line = ld->lineno;
    if (cfg_value_set(&ld->cfg, k, value, why, sizeof why) < 0)
        cfg_error(ld, k, NULL, NULL, "%s", why);
    return 1;
}

static void cfg_file_load(struct cfg_load *ld)
{
    struct cfg_file cf = {.ld = ld};

    cf.f = fopen(ld->path, "r");
    if (cf.f == NULL) {
        fprintf(ld->err, "%s: cannot open config file: %s\n", ld->path, strerror(errno));
        ld->errors++;
        return;
    }
    int before = ld->errors;
    int rc = ini_parse_stream(cfg_file_gets, &cf, cfg_on_pair, ld);
    if (ferror(cf.f)) {
        fprintf(ld->err, "%s: cannot read config file: %s\n", ld->path, strerror(errno));
        ld->errors++;
    } else if (rc == -2) {
        fprintf(ld->err, "%s: out of memory while parsing\n", ld->path);
        ld->errors++;
    } else if (rc != 0 && ld->errors == before) {
        /* inih saw an error our reader did not: still never pass it silently. */
        struct cfg_origin at = {CFG_SRC_FILE, rc};
        cfg_error(ld, NULL, &at, NULL, "syntax error");
    }
    free(cf.buf);
    fclose(cf.f);
}

/* "env WSGATE_SECTION_NAME: key 'section.name': unknown ..." for a variable that names
 * no key. Sections hold no '_', so the first '_' after WSGATE_ ends the section. */
static void cfg_env_unknown(struct cfg_load *ld, const char *var, size_t nlen)
{
    char name[128], label[128], section[64];
    size_t l = 0, sl = 0;
    int dot = 0;

    for (size_t i = 0; i < nlen && i + 1 < sizeof name; i++) {
        unsigned char c = (unsigned char)var[i];
        name[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
        name[i + 1] = '\0';
    }
    for (size_t i = 7; i < nlen && l + 1 < sizeof label; i++) {
        unsigned char c = (unsigned char)tolower((unsigned char)var[i]);
        if (c < 0x20 || c == 0x7f)
            c = '?';
        if (c == '_' && !dot) {
            dot = 1;
            c = '.';
        } else if (!dot && sl + 1 < sizeof section) {
            section[sl++] = (char)c;
        }
        label[l++] = (char)c;
    }
    label[l] = '\0';
    section[sl] = '\0';
    if (dot && cfg_section_known(section))
        fprintf(ld->err, "env %s: key '%s': unknown key\n", name, label);
    else
        fprintf(ld->err, "env %s: key '%s': unknown section '%s'\n", name, label, section);
    ld->errors++;
}

static void cfg_env_load(struct cfg_load *ld, char *const *envp)
{
    char env[96], why[512];

    for (size_t e = 0; envp != NULL && envp[e] != NULL; e++) {
        const char *var = envp[e];
        const char *eq = strchr(var, '=');
        if (strncmp(var, "WSGATE_", 7) != 0 || eq == NULL)
            continue;
        size_t nlen = (size_t)(eq - var);
        int ignored = 0;
        for (size_t i = 0; i < cfg__nenv_ignored; i++) {
            if (strlen(cfg__env_ignored[i]) == nlen && memcmp(var, cfg__env_ignored[i], nlen) == 0)
                ignored = 1;
        }
        if (ignored)
            continue;
        const struct cfg_key *k = NULL;
        for (size_t i = 0; i < cfg__nkeys && k == NULL; i++) {
            cfg_env_name(&cfg__keys[i], env, sizeof env);
            if (strlen(env) == nlen && memcmp(var, env, nlen) == 0)
                k = &cfg__keys[i];
        }
        if (k == NULL) {
            cfg_env_unknown(ld, var, nlen);
            continue;
        }
        struct cfg_origin *o = &ld->origin[k - cfg__keys];
        o->src = CFG_SRC_ENV;
        o->line = 0;
        if (cfg_value_set(&ld->cfg, k, eq + 1, why, sizeof why) < 0)
            cfg_error(ld, k, o, NULL, "%s", why);
    }
}

/* Which of two keys' settings to blame for a conflict: the environment over the file
 * over the defaults; in the file, the later line. */
static const struct cfg_key *cfg_blame(const struct cfg_load *ld, const struct cfg_key *a,
                                       const struct cfg_key *b)
{
    const struct cfg_origin *oa = &ld->origin[a - cfg__keys], *ob = &ld->origin[b - cfg__keys];

    if (oa->src != ob->src)
        return oa->src > ob->src ? a : b;
    return oa->line >= ob->line ? a : b;
}

/* Rules between keys, after the file and the environment. */
static void cfg_cross_check(struct cfg_load *ld)
{
    const struct config *c = &ld->cfg;

    if (c->ping_interval_ms > 0 && c->idle_timeout_ms <= c->ping_interval_ms) {
        const struct cfg_key *ping = cfg_key_find("websocket", "ping_interval");
        const struct cfg_key *idle = cfg_key_find("websocket", "idle_timeout");
        const struct cfg_key *k = cfg_blame(ld, idle, ping);
        char i[32], p[32];
        cfg_num_format(CFG_MS, c->idle_timeout_ms, i, sizeof i);
        cfg_num_format(CFG_MS, c->ping_interval_ms, p, sizeof p);
        cfg_error(ld, k, &ld->origin[k - cfg__keys], NULL,
                  "websocket.idle_timeout (%s) must be greater than websocket.ping_interval "
                  "(%s) when pings are on",
                  i, p);
    }
}

void config_defaults(struct config *cfg)
{
    char why[512];

    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < cfg__nkeys; i++) {
        int rc = cfg_value_set(cfg, &cfg__keys[i], cfg__keys[i].def, why, sizeof why);
        /* A default the table itself rejects is a bug in config_keys.c (test_config). */
        if (rc < 0) {
            fprintf(stderr, "config: built-in default of %s.%s is invalid: %s\n",
                    cfg__keys[i].section, cfg__keys[i].name, why);
            abort();
        }
    }
}

int config_load(struct config *cfg, const char *path, char *const *envp, FILE *err)
{
    /* Built aside and copied out only when valid: on error *cfg is left untouched. */
    struct cfg_load *ld = calloc(1, sizeof *ld + cfg__nkeys * sizeof ld->origin[0]);

    if (err == NULL)
        err = stderr;
    if (ld == NULL) {
        fprintf(err, "config: out of memory\n");
        return -1;
    }
    ld->path = path;
    ld->err = err;
    config_defaults(&ld->cfg);
    if (path != NULL)
        cfg_file_load(ld);
    cfg_env_load(ld, envp);
    cfg_cross_check(ld);
    int rc = ld->errors == 0 ? 0 : -1;
    if (rc == 0)
        *cfg = ld->cfg;
    free(ld);
    return rc;
}

/* --- gateway.conf.example --- */

static const char cfg_file_header[] =
    "; wsgate configuration: every key with its built-in default.\n"
    "; This file mirrors the defaults compiled into wsgate (it is the output of\n"
    "; config_write_defaults() in src/config.c); wsgate without -c runs exactly so.\n"
    "; Every key can be overridden by an environment variable WSGATE_<SECTION>_<KEY>,\n"
    "; upper-cased, e.g. WSGATE_BROKER_TYPE=redis-list or WSGATE_SERVER_MAX_MESSAGE_SIZE=4m;\n"
    "; the environment wins over the file. `wsgate --check-config` validates both.\n"
    ";\n"
    "; Durations: 250ms, 30s, 5m, 1h (a bare number is seconds). Sizes: 512, 64k, 1m\n"
    "; (KiB/MiB; a bare number is bytes). Booleans: on/off, true/false, yes/no, 1/0.\n"
    "; A ';' after a blank starts a comment. A line may have at most 197 characters\n"
    "; (a libinih limit): a longer value (a long URL, broker list or secret) must come\n"
    "; from the environment. Secrets are better kept in the environment anyway.\n";

static void cfg_key_help_write(FILE *out, const struct cfg_key *k)
{
    char lo[32], hi[32], list[128];

    fprintf(out, "; %s", k->help);
    switch (k->type) {
    case CFG_CHOICE:
    case CFG_ENUM:
        cfg_choices_format(k->choices, " | ", list, sizeof list);
        fprintf(out, " One of: %s.", list);
        break;
    case CFG_BOOL:
        fprintf(out, " Boolean.");
        break;
    case CFG_U32:
    case CFG_SIZE:
    case CFG_MS:
    case CFG_SEC:
        cfg_num_format(k->type, k->min, lo, sizeof lo);
        cfg_num_format(k->type, k->max, hi, sizeof hi);
        fprintf(out, " %s, %s..%s.",
                k->type == CFG_U32    ? "Integer"
                : k->type == CFG_SIZE ? "Size"
                                      : "Duration",
                lo, hi);
        break;
    case CFG_STR:
        break;
    }
    fputc('\n', out);
}

void config_write_defaults(FILE *out)
{
    const char *section = NULL;

    fputs(cfg_file_header, out);
    for (size_t i = 0; i < cfg__nkeys; i++) {
        const struct cfg_key *k = &cfg__keys[i];
        if (section == NULL || strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(out, "\n[%s]\n", section);
        }
        cfg_key_help_write(out, k);
        fprintf(out, "%s =%s%s\n", k->name, k->def[0] ? " " : "", k->def);
    }
}
