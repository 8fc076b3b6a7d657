/*
 * probe: the test suite's controller. It counts the events it gets, remembers the annotation "probe-seq" of
 * each in order, and publishes that state in a ConfigMap (config "out" in config "namespace") after every event
 * or timer, so a test reads through the API server what the controller saw, across any number of swaps.
 * The annotation "probe-action" asks for misbehaviour: "trap", "loop", "forbidden" (a request outside its
 * grants: the result is published as "denied"), "timer" (handle-timer 200 ms later).
 *
 * config: {"namespace": "t1", "out": "probe-out", "publish_synced": false}
 */
#include "edgeagent_controller.h"

static char ns[64];
static char out[64];
static unsigned count;
static unsigned timers;
static unsigned synced;
static int publish_synced; /* config "publish_synced": true: handle-synced publishes at once */
static int denied = 1; /* 1: not asked yet */
static char seq[8192];
static size_t seq_len;

static int init(ea_slice config) {
    if (ea_json_string(ea_json_get(config, "namespace"), ns, sizeof ns) <= 0) return 1;
    if (ea_json_string(ea_json_get(config, "out"), out, sizeof out) <= 0) return 1;
    publish_synced = ea_slice_eq(ea_json_get(config, "publish_synced"), "true");
    return 0;
}

static int publish(void) {
    static char req[10240];
    const char *fmt =
        "{\"verb\":\"%s\",\"version\":\"v1\",\"resource\":\"configmaps\",\"namespace\":\"%s\"%s%s%s,"
        "\"body\":{\"metadata\":{\"name\":\"%s\"},\"data\":{\"count\":\"%u\",\"timers\":\"%u\","
        "\"denied\":\"%d\",\"synced\":\"%u\",\"seq\":\"%s\"}}}";
    snprintf(req, sizeof req, fmt, "patch", ns, ",\"name\":\"", out, "\"", out, count, timers, denied, synced, seq);
    int status = ea_k8s_request(req, NULL, 0, NULL);
    if (status == 404) {
        snprintf(req, sizeof req, fmt, "create", ns, "", "", "", out, count, timers, denied, synced, seq);
        status = ea_k8s_request(req, NULL, 0, NULL);
    }
    return (status == 200 || status == 201) ? 0 : 10;
}

static int on_event(const ea_event *ev) {
    char action[32], item[64];
    count++;
    ea_slice ann = ea_json_get(ev->object, "metadata.annotations");
    if (ea_json_string(ea_json_get(ann, "probe-seq"), item, sizeof item) > 0 &&
        seq_len + strlen(item) + 2 < sizeof seq) {
        if (seq_len) seq[seq_len++] = ',';
        strcpy(seq + seq_len, item);
        seq_len += strlen(item);
    }
    if (ea_json_string(ea_json_get(ann, "probe-action"), action, sizeof action) > 0) {
        if (strcmp(action, "trap") == 0) __builtin_trap();
        if (strcmp(action, "loop") == 0) {
            volatile unsigned spin = 0;
            for (;;) spin++;
        }
        if (strcmp(action, "forbidden") == 0)
            denied = ea_k8s_request("{\"verb\":\"get\",\"version\":\"v1\",\"resource\":\"secrets\","
                                    "\"namespace\":\"kube-system\",\"name\":\"anything\"}",
                                    NULL, 0, NULL);
        if (strcmp(action, "timer") == 0) ea_timer_set(7, 200);
    }
    return publish();
}

static int on_timer(uint32_t id) {
    timers++;
    return publish();
}

static int on_synced(void) {
    synced++;
    return publish_synced ? publish() : 0; /* else seen with the next event's publish */
}

EA_CONTROLLER(init, on_event, on_timer)
EA_CONTROLLER_SYNCED(on_synced)
