/* log.c — one key=value line per call on stderr:
 *   ts=2026-11-23T08:43:00.123Z level=info <caller's key=value text>
 * Does NOT decide what is safe to print (callers never pass tokens or query strings) and
 * does NOT buffer: each line goes out in one write(2), so lines from several threads do
 * not interleave (atomic up to PIPE_BUF bytes on a pipe).
 * Thread: log_write and log_enabled from any thread. The level is the one process-wide
 * setting of this module: log_init writes it once at start-up, before any thread starts,
 * and it is only read afterwards. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_STACK 1024      /* most lines fit here; longer ones use the heap */
#define LOG_LINE_MAX (64 * 1024) /* a longer caller text is cut (and marked) */
#define LOG_CUT_MARK " log_truncated=1"
#define LOG_TAIL (sizeof LOG_CUT_MARK + 1) /* room after the text: mark, '\n', NUL */

/* Written by log_init() before threads exist, read-only afterwards (see file header). */
static enum log_level log_level_current = LOG_LEVEL_INFO;

static const char *const log_level_names[] = {
    [LOG_LEVEL_ERROR] = "error",
    [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_DEBUG] = "debug",
};

void log_init(enum log_level level)
{
    log_level_current = level;
}

int log_level_parse(const char *s, enum log_level *out)
{
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < sizeof log_level_names / sizeof log_level_names[0]; i++) {
        if (strcasecmp(s, log_level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

int log_enabled(enum log_level level)
{
    return level <= log_level_current;
}

/* "ts=YYYY-MM-DDTHH:MM:SS.mmmZ level=LVL " into buf; returns its length. */
static int log_prefix_format(char *buf, size_t cap, enum log_level level)
{
    struct timespec ts;
    struct tm tm;
    char date[32];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    return snprintf(buf, cap, "ts=%s.%03ldZ level=%s ", date, ts.tv_nsec / 1000000L,
                    log_level_names[level]);
}

/* Every line ends at its one '\n': control bytes in the caller's text (a newline in
 * a library's error message, say) become '?' so they cannot forge extra lines. */
static void log_text_sanitize(char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            s[i] = '?';
    }
}

static void log_line_write(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere left to report a failing stderr */
        }
        buf += n;
        len -= (size_t)n;
    }
}

void log_write(enum log_level level, const char *fmt, ...)
{
    char stack[LOG_LINE_STACK];
    char *line = stack; /* stack, or owned heap copy freed below */
    size_t cap = sizeof stack;
    va_list ap, ap2;

    if ((unsigned)level > LOG_LEVEL_DEBUG || !log_enabled(level))
        return;
    int pre = log_prefix_format(stack, cap, level);
    if (pre < 0 || (size_t)pre >= cap)
        return;

    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(stack + pre, cap - (size_t)pre, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    size_t text = (size_t)n;
    int cut = 0;
    if ((size_t)pre + text + 1 >= cap) {
        /* Too long for the stack buffer: format again into the heap (capped). */
        if (text > LOG_LINE_MAX) {
            text = LOG_LINE_MAX;
            cut = 1;
        }
        char *heap = malloc((size_t)pre + text + LOG_TAIL);
        if (heap != NULL) {
            memcpy(heap, stack, (size_t)pre);
            vsnprintf(heap + pre, text + 1, fmt, ap2);
            line = heap;
        } else {
            text = cap - (size_t)pre - LOG_TAIL; /* keep what fitted on the stack */
            cut = 1;
        }
    }
    va_end(ap2);

    log_text_sanitize(line + pre, text);
    size_t len = (size_t)pre + text;
    if (cut) {
        memcpy(line + len, LOG_CUT_MARK, sizeof LOG_CUT_MARK - 1);
        len += sizeof LOG_CUT_MARK - 1;
    }
    line[len++] = '\n';
    log_line_write(line, len);
    if (line != stack)
        free(line);
}
