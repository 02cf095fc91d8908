/*
 * examples/c/checkout.c: the floatlm C library in one program. It checks out
 * SEATS seats of FEATURE, shows that one more is refused with
 * FLOATLM_STATUS_NO_LICENSE (all seats taken), and releases them all.
 *
 *   checkout 'ID:SECRET@HOST:PORT' FEATURE SEATS
 *
 * Exit status: 0 all as expected; 1 usage; 2 a call failed; 3 seat SEATS+1
 * was not refused as "all seats taken". Build and run: docs/client-c.md;
 * tests/client_c.rs compiles it with cc and runs it against a real server.
 */
#include <stdio.h>
#include <stdlib.h>

#include "floatlm.h"

#define MAX_SEATS 64

/* Runs on a library thread when a seat is lost: only note it. */
static void on_loss(const FloatlmSeat *seat, const char *reason, void *user_data) {
    (void)seat;
    fprintf(stderr, "seat %d lost: %s\n", *(const int *)user_data, reason);
}

static int fail(const char *what, FloatlmStatus code, const FloatlmError *err) {
    fprintf(stderr, "%s failed: %s: %s\n", what, floatlm_status_name(code), err->message);
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 4 || atoi(argv[3]) < 1 || atoi(argv[3]) > MAX_SEATS) {
        fprintf(stderr, "usage: %s 'ID:SECRET@HOST:PORT' FEATURE SEATS (1..%d)\n", argv[0],
                MAX_SEATS);
        return 1;
    }
    const char *identity = argv[1], *feature = argv[2];
    int seats = atoi(argv[3]);
    static int numbers[MAX_SEATS];
    FloatlmSeat *held[MAX_SEATS] = {0};
    FloatlmClient *client = NULL;
    FloatlmError err;
    int status = 0;

    printf("floatlm C library %s\n", floatlm_version());
    FloatlmStatus rc = floatlm_client_new(identity, NULL, &client, &err);
    if (rc != FLOATLM_STATUS_OK) {
        return fail("floatlm_client_new", rc, &err);
    }

    for (int i = 0; i < seats; i++) {
        rc = floatlm_checkout(client, feature, 10000, &held[i], &err);
        if (rc != FLOATLM_STATUS_OK) {
            status = fail("floatlm_checkout", rc, &err);
            goto out;
        }
        numbers[i] = i + 1;
        floatlm_seat_on_loss(held[i], on_loss, &numbers[i], NULL);
        char *lease = NULL;
        FloatlmSeatState state;
        uint64_t valid_ms = 0;
        if ((rc = floatlm_seat_lease(held[i], &lease, &err)) != FLOATLM_STATUS_OK ||
            (rc = floatlm_seat_state(held[i], &state, &err)) != FLOATLM_STATUS_OK ||
            (rc = floatlm_seat_valid_for_ms(held[i], &valid_ms, &err)) != FLOATLM_STATUS_OK) {
            floatlm_string_free(lease);
            status = fail("reading the seat", rc, &err);
            goto out;
        }
        printf("seat %d of %s: lease %s, %s, valid for %llu ms\n", i + 1, feature, lease,
               state == FLOATLM_SEAT_STATE_HELD ? "held" : "NOT HELD",
               (unsigned long long)valid_ms);
        floatlm_string_free(lease);
        if (state != FLOATLM_SEAT_STATE_HELD) {
            status = 2;
            goto out;
        }
    }

    /* Every seat is ours now: one more must be refused. */
    FloatlmSeat *extra = NULL;
    rc = floatlm_checkout(client, feature, 10000, &extra, &err);
    if (rc == FLOATLM_STATUS_NO_LICENSE && err.reason == FLOATLM_NO_LICENSE_REASON_ALL_SEATS_TAKEN) {
        printf("seat %d refused: %s %s: %s\n", seats + 1, floatlm_status_name(rc),
               floatlm_no_license_reason_name(err.reason), err.message);
    } else {
        fprintf(stderr, "seat %d was not refused as all seats taken: %s %s: %s\n", seats + 1,
                floatlm_status_name(rc), floatlm_no_license_reason_name(err.reason),
                err.message);
        floatlm_seat_free(extra);
        status = 3;
    }

out:
    for (int i = 0; i < seats; i++) {
        if (held[i] == NULL) {
            continue;
        }
        rc = floatlm_seat_release(held[i], 10000, &err);
        if (rc != FLOATLM_STATUS_OK) {
            fail("floatlm_seat_release", rc, &err);
            status = status ? status : 2;
        }
        floatlm_seat_free(held[i]);
    }
    if (status == 0) {
        printf("released %d seats\n", seats);
    }
    floatlm_client_free(client);
    return status;
}
