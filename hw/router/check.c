/* Bad calls across the C ABI: each must return its error code, never crash. Exit 0 if all
 * behave; prints the first that does not. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skyroute.h"

static int failures = 0;

#define EXPECT(call, want)                                                                  \
    do {                                                                                    \
        int got_ = (call);                                                                  \
        if (got_ != (want)) {                                                               \
            char msg_[256];                                                                 \
            skyroute_last_error(msg_, sizeof msg_);                                         \
            fprintf(stderr, "FAIL %s: got %d, want %d (%s)\n", #call, got_, (want), msg_); \
            failures++;                                                                     \
        }                                                                                   \
    } while (0)

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp/skyroute-check";
    char buf[4096];
    size_t needed = 0, len = 0;
    uint64_t node = 0, tunnel = 0;

    /* Null pointers and handles that never existed. */
    EXPECT(skyroute_node_start(NULL, dir, &node), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_node_start("", NULL, &node), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_node_start("", dir, NULL), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_node_public_key(0, buf, sizeof buf), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_node_stop(12345), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_free(0), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_tunnel_send(0, (const uint8_t *)"x", 1), SKYROUTE_ERR_HANDLE);

    /* Invalid configuration: the error names the field. */
    EXPECT(skyroute_node_start("[listen]\nudp = \"nope\"\n", dir, &node), SKYROUTE_ERR_CONFIG);
    skyroute_last_error(buf, sizeof buf);
    if (!strstr(buf, "listen.udp")) {
        fprintf(stderr, "FAIL: the config error does not name the field: %s\n", buf);
        failures++;
    }
    EXPECT(skyroute_node_start("\xff\xfe", dir, &node), SKYROUTE_ERR_ARGUMENT);

    /* A real node: wrong argument types, small buffers. */
    const char *config = "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"off\"\nquic = \"off\"\n";
    EXPECT(skyroute_node_start(config, dir, &node), SKYROUTE_OK);
    EXPECT(skyroute_node_public_key(node, buf, 10), SKYROUTE_ERR_BUFFER);
    EXPECT(skyroute_node_status_json(node, buf, 4, &needed), SKYROUTE_ERR_BUFFER);
    if (needed < 10) {
        fprintf(stderr, "FAIL: needed not reported (%zu)\n", needed);
        failures++;
    }
    char *status = malloc(needed);
    EXPECT(skyroute_node_status_json(node, status, needed, NULL), SKYROUTE_OK);
    free(status);
    EXPECT(skyroute_node_connect(node, "not a key", "127.0.0.1:1"), SKYROUTE_ERR_ARGUMENT);
    EXPECT(skyroute_node_connect(node, NULL, "127.0.0.1:1"), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_tunnel_start(node, "nonsense", 1, &tunnel), SKYROUTE_ERR_ARGUMENT);
    EXPECT(skyroute_tunnel_send(node, (const uint8_t *)"x", 1), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_tunnel_recv(node, (uint8_t *)buf, sizeof buf, &len, 0), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_node_network_changed(node), SKYROUTE_OK);
    static uint8_t huge[70000];
    EXPECT(skyroute_tunnel_send(tunnel, huge, sizeof huge), SKYROUTE_ERR_ARGUMENT);
    EXPECT(skyroute_tunnel_send(tunnel, NULL, 20), SKYROUTE_ERR_HANDLE);

    /* Use after stop, then double free. */
    EXPECT(skyroute_node_stop(node), SKYROUTE_OK);
    EXPECT(skyroute_node_stop(node), SKYROUTE_ERR_STOPPED);
    EXPECT(skyroute_node_connect(node, "02", "127.0.0.1:1"), SKYROUTE_ERR_ARGUMENT);
    EXPECT(skyroute_node_status_json(node, buf, sizeof buf, NULL), SKYROUTE_ERR_STOPPED);
    EXPECT(skyroute_free(node), SKYROUTE_OK);
    EXPECT(skyroute_free(node), SKYROUTE_ERR_HANDLE);
    EXPECT(skyroute_node_public_key(node, buf, sizeof buf), SKYROUTE_ERR_HANDLE);

    if (failures) {
        fprintf(stderr, "%d bad calls misbehaved\n", failures);
        return 1;
    }
    printf("all bad calls returned their error codes\n");
    return 0;
}
