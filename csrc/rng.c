/*
 * rng.c - counter-based random numbers: every draw is a pure function of
 * (seed, stream, index), so dropout masks and shuffles are the same whatever
 * the number of threads, and a mask is recomputed in backward instead of kept.
 * The mixer is splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom
 * number generators", OOPSLA 2014), as used to seed xoshiro.
 */
#include "vgg_internal.h"

uint64_t vgg_rng_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float vgg_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    const uint64_t r = vgg_rng_mix(vgg_rng_mix(seed ^ vgg_rng_mix(stream)) + index);
    return (float)(r >> 40) * (1.0f / 16777216.0f); /* 24 bits: [0, 1) exactly in float */
}

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
