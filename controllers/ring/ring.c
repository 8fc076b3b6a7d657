/*
 * ring: the benchmark controller of "On-demand Wasm Kubernetes controllers" (CloudNet 2022).
 *
 * Controller i watches the Ring object in namespace ring-i and copies its spec.nonce to the Ring of the same
 * name in namespace ring-(i+1) (config "next"). The last one writes back into ring-0, where controller 0 sees
 * the nonce it already forwarded and stops: one round per new nonce. The nonce it forwarded last is kept in a
 * static variable, so it survives swaps; if the API server is unreachable it retries from a timer.
 *
 * config: {"next": "ring-1", "name": "ring"}  (name defaults to "ring")
 * The ring's objects are Rings (edgeagent.io/v1alpha1, ring-crd.json) by default; any kind with the nonce in a
 * top-level map works, e.g. ConfigMaps: {"group": "", "version": "v1", "resource": "configmaps",
 * "field": "data"}.
 */
#include "edgeagent_controller.h"

#define RETRY_TIMER 1

static char next_ns[64];
static char ring_name[64] = "ring";
static char group[64] = "edgeagent.io", version[32] = "v1alpha1", resource[64] = "rings", field[32] = "spec";
static char last_nonce[128];    /* forwarded last: a round ends when it comes back */
static char pending_nonce[128]; /* to forward once the API server answers again */
static unsigned forwarded;

static int init(ea_slice config) {
    if (ea_json_string(ea_json_get(config, "next"), next_ns, sizeof next_ns) <= 0) {
        ea_log(EA_LOG_ERROR, "config needs \"next\" (the namespace to copy the nonce to)");
        return 1;
    }
    char v[64];
    if (ea_json_string(ea_json_get(config, "name"), v, sizeof v) > 0) strcpy(ring_name, v);
    if (ea_json_string(ea_json_get(config, "group"), v, sizeof v) >= 0) strcpy(group, v); /* "" is core */
    if (ea_json_string(ea_json_get(config, "version"), v, sizeof version) > 0) strcpy(version, v);
    if (ea_json_string(ea_json_get(config, "resource"), v, sizeof v) > 0) strcpy(resource, v);
    if (ea_json_string(ea_json_get(config, "field"), v, sizeof field) > 0) strcpy(field, v);
    return 0;
}

static int forward(const char *nonce) {
    char esc[256], req[768];
    if (ea_json_escape(nonce, strlen(nonce), esc, sizeof esc) < 0) return 2;
    snprintf(req, sizeof req,
             "{\"verb\":\"patch\",\"group\":\"%s\",\"version\":\"%s\",\"resource\":\"%s\","
             "\"namespace\":\"%s\",\"name\":\"%s\",\"body\":{\"%s\":{\"nonce\":\"%s\"}}}",
             group, version, resource, next_ns, ring_name, field, esc);
    int status = ea_k8s_request(req, NULL, 0, NULL);
    if (status == EA_ERR_UNAVAILABLE || status >= 500 || status == 429) {
        strcpy(pending_nonce, nonce);
        ea_timer_set(RETRY_TIMER, 1000);
        return 0;
    }
    if (status != 200) {
        ea_log(EA_LOG_WARN, "patch %s %s/%s: status %d", resource, next_ns, ring_name, status);
        return 3;
    }
    pending_nonce[0] = 0;
    strcpy(last_nonce, nonce);
    forwarded++;
    return 0;
}

static int on_event(const ea_event *ev) {
    char nonce[128];
    if (strcmp(ev->type, "DELETED") == 0) return 0;
    char path[48];
    snprintf(path, sizeof path, "%s.nonce", field);
    if (ea_json_string(ea_json_get(ev->object, path), nonce, sizeof nonce) <= 0) return 0;
    if (strcmp(nonce, last_nonce) == 0) return 0; /* the round came back, or nothing new */
    return forward(nonce);
}

static int on_timer(uint32_t id) {
    if (id == RETRY_TIMER && pending_nonce[0]) {
        char nonce[128];
        strcpy(nonce, pending_nonce);
        return forward(nonce);
    }
    return 0;
}

EA_CONTROLLER(init, on_event, on_timer)
