/* broker.c — the list of compiled-in broker backends and the lookup by config name
 * (`[broker] type`). Does NOT implement any backend (backends/<name>.c do) or hold state.
 * Any thread (everything here is constant), except broker_open: loop thread. */
#include <string.h>

#include "broker.h"

/* One line per backend, X(table, "config name"), inserted above the end marker. The name
 * must equal table.name: it is repeated only so broker_names() is a compile-time constant. */
#define BROKER_BACKENDS(X)                                                                         \
    X(broker_memory_ops, "memory")                                                                 \
    X(broker_redis_list_ops, "redis-list")                                                         \
    X(broker_redis_pubsub_ops, "redis-pubsub")                                                     \
    X(broker_nats_ops, "nats")                                                                     \
    X(broker_kafka_ops, "kafka")                                                                   \
    /* end of the backend list */

#define BROKER_TABLE_ENTRY(table, name) &table,
#define BROKER_NAME_ENTRY(table, name) " " name

static const struct broker_ops *const broker_tables[] = {BROKER_BACKENDS(BROKER_TABLE_ENTRY)};
static const char broker_name_list[] = BROKER_BACKENDS(BROKER_NAME_ENTRY); /* " a b c" */

const struct broker_ops *broker_find(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof(broker_tables) / sizeof(broker_tables[0]); i++)
        if (strcmp(broker_tables[i]->name, name) == 0)
            return broker_tables[i];
    return NULL;
}

const char *broker_names(void)
{
    return broker_name_list + 1; /* skip the leading separator */
}

int broker_open(struct broker *b, const struct broker_ops *ops, uv_loop_t *loop,
                const struct config *cfg)
{
    b->ops = ops;
    b->loop = loop;
    b->cfg = cfg;
    b->priv = NULL;
    b->errors = 0;
    b->dropped = 0;
    return ops->open(b, loop, cfg);
}
