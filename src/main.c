/* main.c — command line, configuration, broker and server set-up, the loop, exit.
 * Does NOT handle connections. Main thread = the loop thread. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "log.h"
#include "server.h"
#include "util.h"

#define WSGATE_VERSION "0.1.0"

extern char **environ;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: wsgate [-c FILE] [--check-config] [--help] [--version]\n"
            "       wsgate [-c FILE] --mint-token SESSION [--ttl DURATION]\n"
            "  -c, --config FILE   read FILE (INI); without it, built-in defaults serve\n"
            "      --check-config  validate the configuration (file + WSGATE_* env) and exit\n"
            "      --mint-token S  print an HS256 client JWT for session S signed with\n"
            "                      [auth] jwt_secret (try-out tool), valid --ttl (default 1h)\n"
            "      --print-defaults  print every key with its default (INI) and exit\n"
            "  -h, --help          this text\n"
            "  -V, --version       print the version\n"
            "Every key can be overridden by WSGATE_<SECTION>_<KEY>, e.g. "
            "WSGATE_BROKER_TYPE=redis-list.\n"
            "Brokers: %s\n",
            broker_names());
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check-config", no_argument, NULL, 'k'},
        {"print-defaults", no_argument, NULL, 'p'}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},       {"mint-token", required_argument, NULL, 'm'},
        {"ttl", required_argument, NULL, 't'},     {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *mint = NULL, *ttl = "1h";
    int check = 0, opt;
    while ((opt = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 'k':
            check = 1;
            break;
        case 'm':
            mint = optarg;
            break;
        case 't':
            ttl = optarg;
            break;
        case 'p':
            config_write_defaults(stdout);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("wsgate %s\n", WSGATE_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    static struct config cfg; /* large; read-only once loaded */
    if (config_load(&cfg, path, environ, stderr) < 0)
        return 1;
    const struct broker_ops *ops = broker_find(cfg.broker_type);
    if (ops == NULL) {
        fprintf(stderr, "%s: key 'broker.type': '%s' is not built into this binary (have: %s)\n",
                path ? path : "(built-in defaults)", cfg.broker_type, broker_names());
        return 1;
    }
    static struct auth auth; /* tokens, keys, origin lists: validated here, before anything */
    char err[512];
    if (auth_init(&auth, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: %s\n", path ? path : "(built-in defaults)", err);
        return 1;
    }
    if (mint != NULL) {
        uint64_t ttl_ms;
        char *tok = NULL;
        if (parse_duration_ms(ttl, &ttl_ms) < 0 || ttl_ms < 1000) {
            fprintf(stderr, "--ttl: expected a duration of at least 1s such as 30m or 1h\n");
        } else if (cfg.jwt_secret[0] == '\0') {
            fprintf(stderr, "--mint-token: key 'auth.jwt_secret' is empty (set it in the file "
                            "or WSGATE_AUTH_JWT_SECRET)\n");
        } else if ((tok = auth_mint(&cfg, mint, ttl_ms / 1000, (int64_t)time(NULL))) == NULL) {
            fprintf(stderr, "--mint-token: '%s' is not a valid session key\n", mint);
        }
        auth_free(&auth);
        if (tok == NULL)
            return 1;
        printf("%s\n", tok);
        free(tok);
        return 0;
    }
    if (check) {
        auth_free(&auth);
        printf("%s: configuration ok\n", path ? path : "(built-in defaults)");
        return 0;
    }
    log_init(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct broker broker;
    struct server srv;
    memset(&broker, 0, sizeof(broker));
    int rc = broker_open(&broker, ops, &loop, &cfg);
    if (rc < 0) {
        log_error("event=broker_open_failed broker=%s err=%s", ops->name, uv_err_name(rc));
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        return 1;
    }
    rc = server_start(&srv, &loop, &cfg, &broker, &auth);
    if (rc < 0) {
        srv.exit_code = 1;
        if (srv.phase != SRV_STOPPED) /* failed before its handles existed: close the broker */
            broker_close(&broker, NULL);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    server_free(&srv);
    auth_free(&auth);
    if (uv_loop_close(&loop) != 0)
        log_warn("event=loop_not_empty");
    return srv.exit_code;
}
