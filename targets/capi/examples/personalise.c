/* Personalise a model the way an app does: check the library's ABI, train a two-class patch in
 * the background's manner (a progress bar; the OS "kills" the fit midway, here a cancel from the
 * progress callback), resume it from its checkpoint to the patch an uninterrupted fit gives, keep
 * it in a patch store, and switch between the backbone and the task.
 *
 *   gcc -o personalise targets/capi/examples/personalise.c -I targets/capi/include \
 *       target/release/libedgepatch.a -lm -lpthread -ldl -Wl,-z,noexecstack
 *   ./personalise WORKDIR        (a new or empty directory for the checkpoint and the store)
 */
#define _POSIX_C_SOURCE 200112L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgepatch.h"

#define CHECK(call)                                                                      \
    do {                                                                                 \
        int status_ = (call);                                                            \
        if (status_ != EP_OK) {                                                          \
            fprintf(stderr, "%s failed (%d): %s\n", #call, status_, ep_last_error());    \
            return 1;                                                                    \
        }                                                                                \
    } while (0)

#define EPOCHS 12

/* A w×h RGB image of colour (r, g, b) with deterministic noise. */
static void fill(uint8_t *img, int w, int h, int r, int g, int b, unsigned seed) {
    unsigned s = seed * 2654435761u + 1u;
    int base[3] = {r, g, b};
    for (int i = 0; i < w * h * 3; i++) {
        s = s * 1103515245u + 12345u;
        int v = base[i % 3] + (int)((s >> 16) % 61) - 30;
        img[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
}

/* What the progress callback is told: the step at which to stop (0: never). */
struct Run {
    uint32_t stop_at;
    uint32_t calls;
};

static int32_t progress(const EpProgress *p, void *user) {
    struct Run *run = user;
    if (p->struct_size < sizeof *p) return 1; /* an older library than the header: stop */
    run->calls++;
    int done = (int)(20 * p->step / (p->total_steps ? p->total_steps : 1));
    char bar[21];
    for (int i = 0; i < 20; i++) bar[i] = i < done ? '#' : '.';
    bar[20] = 0;
    printf("  [%s] step %u/%u  loss %.3f  accuracy %.2f  %.0f images/s  %.1f s left\n", bar, p->step, p->total_steps,
           p->loss, p->accuracy, p->images_per_second, p->seconds_left);
    return run->stop_at != 0 && p->step == run->stop_at;
}

/* A bias+logits trainer over 16 red and blue images, in batches of 8 with Adam, on the device
 * Auto picks (a hardware GPU when there is one). */
static int make_trainer(EpRuntime *rt, EpTrainer **tr) {
    const char *labels[] = {"red", "blue"};
    CHECK(ep_trainer_new(rt, "bias+logits", labels, 2, 32, tr));
    EpTrainOptions options;
    CHECK(ep_train_options_init(&options));
    options.device = EP_DEVICE_AUTO;
    options.batch = 8;
    options.optimizer = EP_OPTIMIZER_ADAM;
    CHECK(ep_trainer_set_options(*tr, &options));
    uint8_t img[48 * 40 * 3];
    for (unsigned i = 0; i < 16; i++) {
        int red = i % 2 == 0;
        fill(img, 48, 40, red ? 200 : 30, 40, red ? 30 : 200, i);
        CHECK(ep_trainer_add_rgb8(*tr, img, 48, 40, red ? 0 : 1));
    }
    return 0;
}

static int predict_colours(EpRuntime *rt) {
    uint8_t *img = malloc(64 * 64 * 3);
    EpClass top[2];
    size_t n = 0;
    fill(img, 64, 64, 210, 40, 20, 99);
    CHECK(ep_predict_rgb8(rt, img, 64, 64, 2, top, &n));
    printf("patch top-1 for a red image: %s (%.3f)\n", top[0].label, top[0].prob);
    fill(img, 64, 64, 25, 40, 215, 98);
    CHECK(ep_predict_rgb8(rt, img, 64, 64, 2, top, &n));
    printf("patch top-1 for a blue image: %s (%.3f)\n", top[0].label, top[0].prob);
    free(img);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s WORKDIR\n", argv[0]);
        return 2;
    }
    /* Keeps Mesa's Vulkan device-selection layer, which looking for a GPU loads, from printing
     * about a missing Wayland display on a headless machine (set before any thread starts). */
    setenv("NODEVICE_SELECT", "1", 0);
    if (ep_abi_version() != EP_ABI_VERSION) {
        fprintf(stderr, "built against ABI %u, the library has %u\n", EP_ABI_VERSION, ep_abi_version());
        return 1;
    }
    printf("library: %s\n", ep_version());
    char ckpt[4096], store_dir[4096], device[64];
    snprintf(ckpt, sizeof ckpt, "%s/colours.ckpt", argv[1]);
    snprintf(store_dir, sizeof store_dir, "%s/store", argv[1]);

    EpRuntime *rt = NULL;
    CHECK(ep_runtime_new_embedded(&rt));
    CHECK(ep_runtime_set_device(rt, EP_DEVICE_AUTO));
    CHECK(ep_runtime_device(rt, device, sizeof device));
    printf("predicting on %s\n", device);

    /* The reference: one fit never interrupted. */
    EpTrainer *ref = NULL;
    if (make_trainer(rt, &ref)) return 1;
    CHECK(ep_trainer_fit(ref, EPOCHS, 0.003f, 1, NULL));
    uint8_t *want = NULL;
    size_t want_len = 0;
    CHECK(ep_trainer_save(ref, &want, &want_len));
    ep_trainer_free(ref);

    /* The app's fit: checkpointed every step, stopped midway, resumed. */
    EpTrainer *tr = NULL;
    if (make_trainer(rt, &tr)) return 1;
    CHECK(ep_trainer_set_checkpoint(tr, ckpt, 1, 1));
    struct Run run = {5, 0};
    CHECK(ep_trainer_set_progress(tr, progress, &run));
    int status = ep_trainer_fit(tr, EPOCHS, 0.003f, 1, NULL);
    if (status != EP_ERR_CANCELLED) {
        fprintf(stderr, "the fit was not cancelled (%d): %s\n", status, ep_last_error());
        return 1;
    }
    printf("stopped: %s\n", ep_last_error());
    run.stop_at = 0;
    run.calls = 0;
    float accuracy = 0.0f;
    CHECK(ep_trainer_fit(tr, EPOCHS, 0.003f, 1, &accuracy));
    CHECK(ep_trainer_device(tr, device, sizeof device));
    printf("resumed for %u more steps on %s: last-epoch training accuracy %.2f\n", run.calls, device, accuracy);
    uint8_t *bytes = NULL;
    size_t len = 0;
    CHECK(ep_trainer_save(tr, &bytes, &len));
    int same = len == want_len && memcmp(bytes, want, len) == 0;
    printf("resumed patch identical to an uninterrupted fit: %s\n", same ? "yes" : "no");
    ep_bytes_free(want, want_len);
    ep_trainer_free(tr);

    /* Keep it in a store, list the store, activate the task from it, switch back. */
    EpStore *store = NULL;
    CHECK(ep_store_open(store_dir, 1, &store));
    CHECK(ep_store_add_bytes(store, "colours", bytes, len));
    ep_bytes_free(bytes, len);
    size_t count = 0;
    CHECK(ep_store_count(store, &count));
    for (size_t i = 0; i < count; i++) {
        char name[65];
        CHECK(ep_store_name(store, i, name, sizeof name));
        printf("store task %zu: %s\n", i, name);
    }
    CHECK(ep_store_activate(store, rt, "colours"));
    if (predict_colours(rt)) return 1;
    CHECK(ep_patch_activate(rt, NULL));
    printf("switched back to the backbone\n");
    ep_store_free(store);
    ep_runtime_free(rt);
    return same ? 0 : 1;
}
