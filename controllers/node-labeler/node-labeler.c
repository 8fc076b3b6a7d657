/*
 * node-labeler: publishes a ConfigMap's data as labels of this device's Node.
 *
 * On a device, whoever knows something about it (a Wasm driver's readings, a provisioning step, an operator)
 * writes it into a ConfigMap; this controller mirrors each data key K = V as the label PREFIX+K = V on the
 * Node, so schedulers and selectors can use it. Keys that disappear from the ConfigMap (or the whole ConfigMap)
 * are removed from the Node again: the set of labels it manages is remembered across swaps in a static table.
 * It needs nothing but `patch` on its own Node.
 *
 * A patch that fails for a reason that passes (the Node not registered yet: a kubelet registers it a moment
 * after the device's credential exists; the API server away; 409/429/5xx) is retried from a timer, 1 s then
 * doubling up to 30 s, until it lands or a newer event replaces what is to be published.
 *
 * config: {"node": "edge1", "prefix": "device.edgeagent.io/"}
 */
#include "edgeagent_controller.h"

#define MAX_LABELS 32
#define KEY_MAX 64
#define VALUE_MAX 64

static char node[254];
static char prefix[128] = "device.edgeagent.io/";
static char managed[MAX_LABELS][KEY_MAX]; /* data keys currently published as labels */
static int n_managed;
static unsigned patches;
/* The patch waiting to be (re)sent and the data keys it publishes; both survive swaps with the memory. */
static char pending_req[5120];
static char pending_seen[MAX_LABELS][KEY_MAX];
static int pending_n_seen = -1; /* -1: nothing pending */
static uint32_t retry_ms;
#define RETRY_TIMER 1
#define RETRY_MAX_MS 30000

static int init(ea_slice config) {
    if (ea_json_string(ea_json_get(config, "node"), node, sizeof node) <= 0) {
        ea_log(EA_LOG_ERROR, "config needs \"node\" (the Node to label)");
        return 1;
    }
    char p[128];
    if (ea_json_string(ea_json_get(config, "prefix"), p, sizeof p) > 0) strcpy(prefix, p);
    return 0;
}

/* Appends `"PREFIXkey":value` to the labels object being built; value is raw JSON (a string or null). */
static int add_label(char *buf, size_t cap, size_t *o, const char *key, const char *value_json) {
    char ek[2 * KEY_MAX];
    if (ea_json_escape(key, strlen(key), ek, sizeof ek) < 0) return -1;
    int n = snprintf(buf + *o, cap - *o, "%s\"%s%s\":%s", *o && buf[*o - 1] != '{' ? "," : "", prefix, ek,
                     value_json);
    if (n < 0 || (size_t)n >= cap - *o) return -1;
    *o += (size_t)n;
    return 0;
}

static int publish(void);

static int on_event(const ea_event *ev) {
    char labels[4096];
    size_t o = 0;
    char seen[MAX_LABELS][KEY_MAX];
    int n_seen = 0;
    labels[o++] = '{';
    labels[o] = 0;
    if (strcmp(ev->type, "DELETED") != 0) {
        ea_slice data = ea_json_get(ev->object, "data"), k, v;
        size_t pos = 0;
        while (ea_json_next(data, &pos, &k, &v) && n_seen < MAX_LABELS) {
            char key[KEY_MAX], value[VALUE_MAX], ev_json[2 * VALUE_MAX + 3];
            if (k.n == 0 || k.n >= KEY_MAX) continue;
            memcpy(key, k.p, k.n);
            key[k.n] = 0;
            if (ea_json_string(v, value, sizeof value) < 0) {
                ea_log(EA_LOG_WARN, "data key %s: value is not a string of at most 63 bytes; skipped", key);
                continue;
            }
            ev_json[0] = '"';
            int m = ea_json_escape(value, strlen(value), ev_json + 1, sizeof ev_json - 2);
            if (m < 0) continue;
            ev_json[m + 1] = '"';
            ev_json[m + 2] = 0;
            if (add_label(labels, sizeof labels, &o, key, ev_json) < 0) return 2;
            strcpy(seen[n_seen++], key);
        }
    }
    /* Labels published before whose key is gone: remove them (merge patch null). */
    for (int i = 0; i < n_managed; i++) {
        int still = 0;
        for (int j = 0; j < n_seen; j++) still |= strcmp(managed[i], seen[j]) == 0;
        if (!still && add_label(labels, sizeof labels, &o, managed[i], "null") < 0) return 2;
    }
    if (o + 2 > sizeof labels) return 2;
    labels[o++] = '}';
    labels[o] = 0;
    if (o == 2 && n_managed == 0) return 0; /* nothing to publish, nothing to remove */

    int n = snprintf(pending_req, sizeof pending_req,
                     "{\"verb\":\"patch\",\"group\":\"\",\"version\":\"v1\",\"resource\":\"nodes\","
                     "\"name\":\"%s\",\"body\":{\"metadata\":{\"labels\":%s}}}",
                     node, labels);
    if (n < 0 || (size_t)n >= sizeof pending_req) return 2;
    for (int i = 0; i < n_seen; i++) strcpy(pending_seen[i], seen[i]);
    pending_n_seen = n_seen;
    retry_ms = 0;
    ea_timer_cancel(RETRY_TIMER);
    return publish();
}

/* Whether a failed patch may succeed later without anything else changing. */
static int transient(int status) {
    return status == 404 || status == 409 || status == 429 || status >= 500 || status == EA_ERR_UNAVAILABLE;
}

static int publish(void) {
    if (pending_n_seen < 0) return 0;
    int status = ea_k8s_request(pending_req, NULL, 0, NULL);
    if (status != 200) {
        if (!transient(status)) {
            ea_log(EA_LOG_WARN, "patch node %s labels: status %d", node, status);
            pending_n_seen = -1;
            return 3;
        }
        retry_ms = retry_ms ? (retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : retry_ms * 2) : 1000;
        ea_log(EA_LOG_INFO, "patch node %s labels: status %d; retrying in %u ms", node, status, retry_ms);
        ea_timer_set(RETRY_TIMER, retry_ms);
        return 0;
    }
    for (int i = 0; i < pending_n_seen; i++) strcpy(managed[i], pending_seen[i]);
    n_managed = pending_n_seen;
    pending_n_seen = -1;
    retry_ms = 0;
    patches++;
    return 0;
}

static int on_timer(uint32_t id) { return id == RETRY_TIMER ? publish() : 0; }

EA_CONTROLLER(init, on_event, on_timer)
