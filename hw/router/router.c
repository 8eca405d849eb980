/* A relay router on the skyroute C ABI: what firmware on a home router or a miner does.
 *
 *   router <config.toml> <data-dir>
 *
 * Starts a node with the configuration (listen addresses, static peers: see the README's
 * `skyroute node` section), prints its public key and listen addresses, relays traffic for
 * routes through it until SIGINT/SIGTERM, then stops and frees the node. */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "skyroute.h"

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

static int fail(const char *what, int code) {
    char msg[512];
    skyroute_last_error(msg, sizeof msg);
    fprintf(stderr, "router: %s failed (%d): %s\n", what, code, msg);
    return 1;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "router: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len - 1 == 0) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf) buf[len] = 0;
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <config.toml> <data-dir>\n", argv[0]);
        return 2;
    }
    char *config = read_file(argv[1]);
    if (!config) return 2;

    uint64_t node = 0;
    int rc = skyroute_node_start(config, argv[2], &node);
    free(config);
    if (rc != SKYROUTE_OK) return fail("skyroute_node_start", rc);

    char key[80];
    rc = skyroute_node_public_key(node, key, sizeof key);
    if (rc != SKYROUTE_OK) return fail("skyroute_node_public_key", rc);
    char listen[512];
    rc = skyroute_node_listen(node, listen, sizeof listen, NULL);
    if (rc != SKYROUTE_OK) return fail("skyroute_node_listen", rc);
    printf("skyroute %s router\npublic_key %s\nlisten %s\nready\n", skyroute_version(), key, listen);
    fflush(stdout);

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    struct timespec tick = {0, 100 * 1000 * 1000};
    while (!stop_requested) nanosleep(&tick, NULL);

    rc = skyroute_node_stop(node);
    if (rc != SKYROUTE_OK) return fail("skyroute_node_stop", rc);
    rc = skyroute_free(node);
    if (rc != SKYROUTE_OK) return fail("skyroute_free", rc);
    printf("stopped\n");
    return 0;
}
