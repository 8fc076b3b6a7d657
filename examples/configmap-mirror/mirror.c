/*
 * configmap-mirror: keeps a copy of each ConfigMap labelled mirror=yes of namespace FROM in namespace TO.
 *
 * ADDED/MODIFIED: the copy is created or replaced (same name, same data). DELETED, which the host also sends
 * when a ConfigMap stops matching the label selector: the copy is deleted. handle-synced (once every watch
 * has listed, after each host start) is where a controller forgets what was deleted while no host ran; this
 * one only logs it, its copies being re-created from the list anyway.
 *
 * config: {"from": "src", "to": "dst"}
 */
#include "edgeagent_controller.h"

static char from[64] = "src";
static char to[64] = "dst";
static unsigned copies;

static int init(ea_slice config) {
    char v[64];
    if (ea_json_string(ea_json_get(config, "from"), v, sizeof v) > 0) strcpy(from, v);
    if (ea_json_string(ea_json_get(config, "to"), v, sizeof v) > 0) strcpy(to, v);
    return 0;
}

static int on_event(const ea_event *ev) {
    static char req[16384];
    char name[254];
    if (ea_json_string(ea_json_get(ev->object, "metadata.name"), name, sizeof name) <= 0) return 1;
    if (strcmp(ev->type, "DELETED") == 0) {
        snprintf(req, sizeof req,
                 "{\"verb\":\"delete\",\"version\":\"v1\",\"resource\":\"configmaps\",\"namespace\":\"%s\","
                 "\"name\":\"%s\"}",
                 to, name);
        int status = ea_k8s_request(req, NULL, 0, NULL);
        ea_log(EA_LOG_INFO, "deleted %s/%s: %d", to, name, status);
        return (status == 200 || status == 404) ? 0 : 2;
    }
    ea_slice data = ea_json_get(ev->object, "data");
    int status = 0;
    for (int create = 0; create < 2; create++) { /* replace the copy; if there is none yet, create it */
        int n = snprintf(req, sizeof req,
                         "{\"verb\":\"%s\",\"version\":\"v1\",\"resource\":\"configmaps\",\"namespace\":\"%s\"%s%s%s,"
                         "\"body\":{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"%s\","
                         "\"namespace\":\"%s\"},\"data\":%.*s}}",
                         create ? "create" : "update", to, create ? "" : ",\"name\":\"", create ? "" : name,
                         create ? "" : "\"", name, to, data.n ? (int)data.n : 2, data.n ? data.p : "{}");
        if (n < 0 || (size_t)n >= sizeof req) return 3;
        status = ea_k8s_request(req, NULL, 0, NULL);
        if (status != 404) break;
    }
    if (status == 200 || status == 201) copies++;
    ea_log(EA_LOG_INFO, "copied %s/%s to %s: %d", from, name, to, status);
    return (status == 200 || status == 201) ? 0 : 4;
}

static int on_synced(void) {
    ea_log(EA_LOG_INFO, "initial list done: %u copies written since start", copies);
    return 0;
}

EA_CONTROLLER(init, on_event, NULL)
EA_CONTROLLER_SYNCED(on_synced)
