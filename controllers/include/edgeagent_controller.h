/*
 * edgeagent_controller.h: the Wasm controller ABI (controllers/wit/controller.wit) and a small guest SDK.
 *
 * A controller is a wasm32-wasi reactor module. The host (edgeagent controllers run) delivers watch events as
 * JSON, lets the controller send Kubernetes API requests (checked against the grants in its manifest before
 * they leave the host), set timers and log. Between events the host may snapshot the controller's linear
 * memory and globals to disk and drop the instance; the next event restores it. To the controller this is
 * invisible: static and heap variables keep their values. So keep state in variables, not in WASI resources
 * (files, clocks' absolute values across swaps are fine, open descriptors are not).
 *
 * A controller is one C file:
 *
 *     #include "edgeagent_controller.h"
 *
 *     static int on_event(const ea_event *ev) {
 *         char name[64];
 *         ea_json_string(ea_json_get(ev->object, "metadata.name"), name, sizeof name);
 *         ea_log(EA_LOG_INFO, "%s %s", ev->type, name);
 *         return 0;                       // non-zero: counted as an error in `edgeagent controllers list`
 *     }
 *     EA_CONTROLLER(NULL, on_event, NULL)   // init(config), handle-event, handle-timer
 *
 * Build (controllers/Makefile): clang-14 --target=wasm32-wasi -mexec-model=reactor -mmutable-globals
 *   -Wl,--export=__stack_pointer -Wl,-z,stack-size=65536. __stack_pointer must be exported: it is part of the
 *   state a snapshot saves.
 *
 * The JSON helpers are deliberately minimal: look up a value by a dotted path, read it as a string or integer,
 * iterate an object's members, escape a string for a request. They never allocate.
 */
#ifndef EDGEAGENT_CONTROLLER_H
#define EDGEAGENT_CONTROLLER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ imports (controller.wit) */
#define EA_IMPORT(module, name) __attribute__((import_module(module), import_name(name)))

/* k8s.request: the request JSON (see ea_k8s_request); returns the HTTP status or a negative EA_ERR_*. */
EA_IMPORT("edgeagent:controller/k8s", "request") int32_t ea_k8s_request_raw(const char *req, size_t len);
/* k8s.response-len / response-read: the body of the last answer (a Kubernetes object or Status). */
EA_IMPORT("edgeagent:controller/k8s", "response-len") int32_t ea_k8s_response_len(void);
EA_IMPORT("edgeagent:controller/k8s", "response-read") int32_t ea_k8s_response_read(char *buf, size_t cap);
/* timer.set-timer / cancel-timer: handle-timer(id) runs after delay_ms (it survives swaps). */
EA_IMPORT("edgeagent:controller/timer", "set-timer") void ea_timer_set(uint32_t id, uint32_t delay_ms);
EA_IMPORT("edgeagent:controller/timer", "cancel-timer") void ea_timer_cancel(uint32_t id);
/* log.log: one line at a level (enum level { trace, debug, info, warn, error }). */
EA_IMPORT("edgeagent:controller/log", "log") void ea_log_raw(uint32_t level, const char *msg, size_t len);

/* k8s error-code, as negative results of ea_k8s_request. */
#define EA_ERR_DENIED (-1)      /* outside the manifest's grants: the request never left the host */
#define EA_ERR_INVALID (-2)     /* the host could not understand the request */
#define EA_ERR_UNAVAILABLE (-3) /* the API server cannot be reached right now: retry later (a timer) */

enum { EA_LOG_TRACE, EA_LOG_DEBUG, EA_LOG_INFO, EA_LOG_WARN, EA_LOG_ERROR };

/* ------------------------------------------------------------------ slices and JSON */
typedef struct {
    const char *p;
    size_t n; /* 0: absent */
} ea_slice;

static inline ea_slice ea_slice_of(const char *s) {
    ea_slice r = {s, s ? strlen(s) : 0};
    return r;
}

static inline int ea_slice_eq(ea_slice a, const char *s) {
    size_t n = strlen(s);
    return a.n == n && memcmp(a.p, s, n) == 0;
}

static inline size_t ea__ws(ea_slice j, size_t i) {
    while (i < j.n && (j.p[i] == ' ' || j.p[i] == '\t' || j.p[i] == '\n' || j.p[i] == '\r')) i++;
    return i;
}

/* Index just past the JSON value starting at i (i itself on a malformed value). */
static inline size_t ea__skip(ea_slice j, size_t i) {
    if (i >= j.n) return i;
    char c = j.p[i];
    if (c == '"') {
        for (i++; i < j.n; i++) {
            if (j.p[i] == '\\') i++;
            else if (j.p[i] == '"') return i + 1;
        }
        return j.n;
    }
    if (c == '{' || c == '[') {
        int depth = 0;
        for (; i < j.n; i++) {
            char d = j.p[i];
            if (d == '"') {
                i = ea__skip(j, i) - 1;
            } else if (d == '{' || d == '[') {
                depth++;
            } else if (d == '}' || d == ']') {
                if (--depth == 0) return i + 1;
            }
        }
        return j.n;
    }
    while (i < j.n && j.p[i] != ',' && j.p[i] != '}' && j.p[i] != ']' && j.p[i] != ' ' && j.p[i] != '\n') i++;
    return i;
}

/* Iterates an object's members: start with *pos = 0; returns 0 when there are no more. Keys are raw (quoted
 * content without unescaping, enough for ASCII keys); values are raw JSON values. */
static inline int ea_json_next(ea_slice obj, size_t *pos, ea_slice *key, ea_slice *value) {
    size_t i = *pos;
    if (i == 0) {
        i = ea__ws(obj, 0);
        if (i >= obj.n || obj.p[i] != '{') return 0;
        i++;
    }
    i = ea__ws(obj, i);
    if (i < obj.n && obj.p[i] == ',') i = ea__ws(obj, i + 1);
    if (i >= obj.n || obj.p[i] != '"') return 0;
    size_t kend = ea__skip(obj, i);
    key->p = obj.p + i + 1;
    key->n = kend - i - 2;
    i = ea__ws(obj, kend);
    if (i >= obj.n || obj.p[i] != ':') return 0;
    i = ea__ws(obj, i + 1);
    size_t vend = ea__skip(obj, i);
    value->p = obj.p + i;
    value->n = vend - i;
    *pos = vend;
    return vend > i;
}

/* The raw value at a dotted path ("object.metadata.name"); n == 0 if any step is missing or not an object. */
static inline ea_slice ea_json_get(ea_slice json, const char *path) {
    ea_slice cur = json, none = {NULL, 0};
    while (*path) {
        const char *dot = strchr(path, '.');
        size_t seg = dot ? (size_t)(dot - path) : strlen(path);
        size_t pos = 0;
        ea_slice k, v;
        int found = 0;
        while (ea_json_next(cur, &pos, &k, &v)) {
            if (k.n == seg && memcmp(k.p, path, seg) == 0) {
                found = 1;
                break;
            }
        }
        if (!found) return none;
        cur = v;
        path += seg + (dot ? 1 : 0);
    }
    return cur;
}

/* A JSON string value, unescaped into out (NUL-terminated). Returns its length, or -1 if the value is not a
 * string or does not fit. \uXXXX escapes outside ASCII become '?': labels and names are ASCII. */
static inline int ea_json_string(ea_slice v, char *out, size_t cap) {
    if (cap == 0) return -1;
    out[0] = 0;
    if (v.n < 2 || v.p[0] != '"') return -1;
    size_t o = 0;
    for (size_t i = 1; i + 1 < v.n; i++) {
        char c = v.p[i];
        if (c == '\\' && i + 2 < v.n) {
            c = v.p[++i];
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned u = 0;
                for (int k = 0; k < 4 && i + 1 < v.n - 1; k++) {
                    char h = v.p[++i];
                    u = u * 16 + (unsigned)(h >= 'a' ? h - 'a' + 10 : h >= 'A' ? h - 'A' + 10 : h - '0');
                }
                c = u < 0x80 ? (char)u : '?';
                break;
            }
            default: break; /* \" \\ \/ */
            }
        }
        if (o + 1 >= cap) {
            out[0] = 0;
            return -1;
        }
        out[o++] = c;
    }
    out[o] = 0;
    return (int)o;
}

/* A JSON number (or a string holding one) as an integer; dflt if absent or not a number. */
static inline long long ea_json_int(ea_slice v, long long dflt) {
    char buf[32];
    if (v.n == 0) return dflt;
    if (v.p[0] == '"') {
        if (ea_json_string(v, buf, sizeof buf) < 0) return dflt;
    } else {
        if (v.n >= sizeof buf) return dflt;
        memcpy(buf, v.p, v.n);
        buf[v.n] = 0;
    }
    char *end;
    long long r = strtoll(buf, &end, 10);
    return (end == buf) ? dflt : r;
}

/* Writes s as a JSON string body (no quotes) into out; returns the length, or -1 if it does not fit. */
static inline int ea_json_escape(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char tmp[8];
        size_t k;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            k = 2;
        } else if (c < 0x20) {
            k = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", c);
        } else {
            tmp[0] = (char)c;
            k = 1;
        }
        if (o + k + 1 > cap) return -1;
        memcpy(out + o, tmp, k);
        o += k;
    }
    if (cap) out[o] = 0;
    return (int)o;
}

/* ------------------------------------------------------------------ logging and requests */
static inline void ea_log(uint32_t level, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    ea_log_raw(level, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Sends a request and copies the answer's body into resp (NUL-terminated, truncated to cap; *resp_len gets the
 * full length). Returns the HTTP status, or EA_ERR_DENIED / EA_ERR_INVALID / EA_ERR_UNAVAILABLE.
 *
 * The request is JSON: {"verb": get|list|create|update|patch|delete|deletecollection, "group": "" for core,
 * "version", "resource" (plural), "namespace" (omit for cluster-scoped), "name", "subresource",
 * "body" (object), "patch_type": merge|json|strategic, "query": {"labelSelector": "..."}}. */
static inline int ea_k8s_request(const char *req, char *resp, size_t cap, size_t *resp_len) {
    int status = ea_k8s_request_raw(req, strlen(req));
    int32_t len = ea_k8s_response_len();
    if (resp_len) *resp_len = (size_t)(len < 0 ? 0 : len);
    if (resp && cap) {
        int32_t got = ea_k8s_response_read(resp, cap - 1);
        size_t n = (size_t)(got < 0 ? 0 : got);
        resp[n < cap - 1 ? n : cap - 1] = 0;
    }
    return status;
}

/* ------------------------------------------------------------------ exports (controller.wit `handler`) */
typedef struct {
    const char *type; /* "ADDED", "MODIFIED" or "DELETED" */
    ea_slice object;  /* the object as JSON */
    ea_slice raw;     /* the whole event JSON */
} ea_event;

/* One buffer the host writes events into; reused, grown as needed. */
static char *ea__buf;
static size_t ea__cap;

static inline void *ea__alloc(size_t n) {
    if (n + 1 > ea__cap) {
        char *p = (char *)realloc(ea__buf, n + 1);
        if (!p) return NULL;
        ea__buf = p;
        ea__cap = n + 1;
    }
    return ea__buf;
}

static inline int ea__dispatch(int (*fn)(const ea_event *), const char *p, size_t n) {
    ea_event ev;
    ea_slice raw = {p, n};
    ea_slice t = ea_json_get(raw, "type");
    ev.type = ea_slice_eq(t, "\"ADDED\"")      ? "ADDED"
              : ea_slice_eq(t, "\"MODIFIED\"") ? "MODIFIED"
              : ea_slice_eq(t, "\"DELETED\"")  ? "DELETED"
                                               : "UNKNOWN";
    ev.object = ea_json_get(raw, "object");
    ev.raw = raw;
    return fn ? fn(&ev) : 0;
}

/* Defines the exports. INIT: int (*)(ea_slice config_json) or NULL; EVENT: int (*)(const ea_event *);
 * TIMER: int (*)(uint32_t id) or NULL. Use once, in the controller's one C file. */
#define EA_CONTROLLER(INIT, EVENT, TIMER)                                                                     \
    __attribute__((export_name("alloc"))) void *ea_export_alloc(size_t n) { return ea__alloc(n); }         \
    __attribute__((export_name("init"))) int32_t ea_export_init(const char *p, size_t n) {                  \
        int (*fn)(ea_slice) = INIT;                                                                            \
        ea_slice cfg = {p, n};                                                                                 \
        return fn ? fn(cfg) : 0;                                                                               \
    }                                                                                                          \
    __attribute__((export_name("handle-event"))) int32_t ea_export_event(const char *p, size_t n) {         \
        return ea__dispatch(EVENT, p, n);                                                                      \
    }                                                                                                          \
    __attribute__((export_name("handle-timer"))) int32_t ea_export_timer(uint32_t id) {                     \
        int (*fn)(uint32_t) = TIMER;                                                                           \
        return fn ? fn(id) : 0;                                                                                \
    }

/* Optional: FN (int (*)(void)) runs once every watch has delivered its initial list, on each host start (also
 * after a restore from the snapshot a previous host saved). The place to forget objects deleted while no host
 * ran: they get no DELETED event. Use once, beside EA_CONTROLLER. */
#define EA_CONTROLLER_SYNCED(FN)                                                                              \
    __attribute__((export_name("handle-synced"))) int32_t ea_export_synced(void) { return FN(); }

#endif /* EDGEAGENT_CONTROLLER_H */
