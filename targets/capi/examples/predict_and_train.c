/* The edgepatch C ABI end to end: classify an image file with the embedded MobileNetV2, show a
 * clean error for bad input, train a tiny two-class patch from RGB buffers, save it to bytes,
 * load it back, switch to it, predict with it, and switch back.
 *
 *   gcc -o predict_and_train targets/capi/examples/predict_and_train.c -I targets/capi/include \
 *       target/release/libedgepatch.a -lm -lpthread -ldl -Wl,-z,noexecstack
 *   ./predict_and_train models/mobilenet_v2/reference/chelsea.png
 */
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

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
        return 2;
    }
    EpRuntime *rt = NULL;
    CHECK(ep_runtime_new_embedded(&rt));
    EpClass top[3];
    size_t n = 0;
    CHECK(ep_predict_file(rt, argv[1], 3, top, &n));
    printf("backbone top-1: %s (%.3f)\n", top[0].label, top[0].prob);

    if (ep_predict_rgb8(rt, NULL, 10, 10, 3, top, &n) != EP_ERR_ARGUMENT) {
        fprintf(stderr, "a null image was not refused\n");
        return 1;
    }
    printf("bad input refused: %s\n", ep_last_error());

    const char *labels[] = {"red", "blue"};
    EpTrainer *tr = NULL;
    CHECK(ep_trainer_new(rt, "bias+logits", labels, 2, 32, &tr));
    uint8_t *img = malloc(64 * 64 * 3);
    for (unsigned i = 0; i < 16; i++) {
        int red = i % 2 == 0;
        fill(img, 48, 40, red ? 200 : 30, 40, red ? 30 : 200, i);
        CHECK(ep_trainer_add_rgb8(tr, img, 48, 40, red ? 0 : 1));
    }
    float accuracy = 0.0f;
    CHECK(ep_trainer_fit(tr, 30, 0.03f, 1, &accuracy));
    uint8_t *bytes = NULL;
    size_t len = 0;
    CHECK(ep_trainer_save(tr, &bytes, &len));
    printf("trained a bias+logits patch: %zu bytes, last-epoch training accuracy %.2f\n", len, accuracy);
    CHECK(ep_patch_load_bytes(rt, "colours", bytes, len));
    ep_bytes_free(bytes, len);
    ep_trainer_free(tr);

    CHECK(ep_patch_activate(rt, "colours"));
    fill(img, 64, 64, 210, 40, 20, 99);
    CHECK(ep_predict_rgb8(rt, img, 64, 64, 2, top, &n));
    printf("patch top-1 for a red image: %s (%.3f)\n", top[0].label, top[0].prob);
    fill(img, 64, 64, 25, 40, 215, 98);
    CHECK(ep_predict_rgb8(rt, img, 64, 64, 2, top, &n));
    printf("patch top-1 for a blue image: %s (%.3f)\n", top[0].label, top[0].prob);

    CHECK(ep_patch_activate(rt, NULL));
    CHECK(ep_predict_file(rt, argv[1], 1, top, &n));
    printf("backbone again: %s\n", top[0].label);
    free(img);
    ep_runtime_free(rt);
    return 0;
}
