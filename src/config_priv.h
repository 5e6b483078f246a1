/* config_priv.h — what src/config.c (loading, validation, writing the defaults) and
 * src/config_keys.c (the key table) share: the shape of one key, the units of numbers and
 * the table itself. Included by those two files only (test_config checks the table
 * against its own copy). Does NOT parse anything. Thread: main thread at start-up (the
 * table is const). */
#ifndef WSGATE_CONFIG_PRIV_H
#define WSGATE_CONFIG_PRIV_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define KIB 1024ULL
#define MIB (1024ULL * 1024ULL)
#define SEC_MS 1000ULL
#define MIN_MS (60ULL * SEC_MS)
#define HOUR_MS (60ULL * MIN_MS)

enum cfg_type {
    CFG_STR,    /* char[] field; check() validates the form */
    CFG_CHOICE, /* char[] field holding one of choices[] (canonical spelling) */
    CFG_ENUM,   /* enum field: the index of the value in choices[] */
    CFG_U32,    /* uint32_t, decimal */
    CFG_SIZE,   /* uint64_t bytes: 512, 64k, 1m */
    CFG_MS,     /* uint64_t milliseconds: 250ms, 30s, 5m, 1h, bare = seconds */
    CFG_SEC,    /* uint64_t seconds, written as a duration of whole seconds */
    CFG_BOOL,   /* int 0/1: on/off, true/false, yes/no, 1/0 */
};

#define CFG_SECRET 0x1 /* never echo the value in an error */

/* String form check: 0, or -1 with the reason in why. */
typedef int (*cfg_check_fn)(const char *v, char *why, size_t whylen);

struct cfg_key {
    const char *section; /* borrowed: string literal */
    const char *name;    /* borrowed: string literal */
    enum cfg_type type;
    size_t offset;              /* of the field in struct config */
    size_t size;                /* of the field: string capacity or integer width */
    const char *def;            /* borrowed: default, in config-file syntax */
    const char *help;           /* borrowed: one line for config_write_defaults */
    uint64_t min, max;          /* numbers: allowed range after unit conversion */
    const char *const *choices; /* borrowed: CFG_CHOICE, CFG_ENUM: NULL-terminated */
    cfg_check_fn check;         /* CFG_STR: form check, or NULL for any text */
    unsigned flags;             /* CFG_SECRET */
};

/* config_keys.c: every key, grouped by section in the order config_write_defaults writes
 * them; the one source of defaults, help lines, ranges and environment variable names. */
extern const struct cfg_key cfg__keys[];
extern const size_t cfg__nkeys;
/* Section names, to tell "unknown key" from "unknown section". */
extern const char *const cfg__sections[];
extern const size_t cfg__nsections;
/* WSGATE_* variables that are not config keys: the environment pass skips them. */
extern const char *const cfg__env_ignored[];
extern const size_t cfg__nenv_ignored;

#endif
