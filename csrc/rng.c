/*
 * rng.c - counter-based random numbers: every draw is a pure function of
 * (seed, stream, index), so dropout masks and shuffles are the same whatever
 * the number of threads, and a mask is recomputed in backward instead of kept.
 * The mixer is splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom
 * number generators", OOPSLA 2014), as used to seed xoshiro; it and the
 * uniform draws are inline, in vgg_internal.h.
 */
#include "vgg_internal.h"

void vgg_rng_permutation(int64_t *order, size_t n, uint64_t seed, uint64_t stream) {
    for (size_t i = 0; i < n; i++) order[i] = (int64_t)i;
    /* Fisher-Yates; j = state mod i has a bias below i / 2^64: nil for any N here */
    uint64_t state = vgg_rng_mix(seed ^ vgg_rng_mix(stream + 0x5bd1e995ull));
    for (size_t i = n; i > 1; i--) {
        state = vgg_rng_mix(state);
        const size_t j = (size_t)(state % (uint64_t)i);
        const int64_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}
