/* log.h — key=value log lines on stderr with a level.
 * Does NOT log tokens or query strings: callers pass only what may be printed.
 * Thread: the level is set once by log_init() before any thread starts; log_write is
 * safe from any thread (one fprintf per line, stderr is unbuffered). */
#ifndef WSGATE_LOG_H
#define WSGATE_LOG_H

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };

/* Set the process log level; called once at start-up, before the loop runs. */
void log_init(enum log_level level);
/* Parse "error|warn|info|debug"; returns 0 and sets *out, or -1. */
int log_level_parse(const char *s, enum log_level *out);
/* Is this level enabled? Cheap; lets callers skip formatting. */
int log_enabled(enum log_level level);
/* Write "ts=... level=... <fmt>" as one line. fmt carries key=value pairs. */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_enabled(LOG_LEVEL_DEBUG))                                                          \
            log_write(LOG_LEVEL_DEBUG, __VA_ARGS__);                                               \
    } while (0)

#endif
