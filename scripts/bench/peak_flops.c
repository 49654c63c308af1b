// The multiply-add limits of this CPU, for BENCHMARKS.md ("Generation at the FMA limit"):
//   gcc -O2 -pthread scripts/bench/peak_flops.c -o /tmp/peak_flops && /tmp/peak_flops
// Independent FMA chains (AVX2 and AVX-512, 1 and 2 threads), AVX512-BF16 `vdpbf16ps`, and AMX
// `tdpbf16ps` on one core (Linux; skipped where the CPU or kernel lacks them).
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <cpuid.h>

#define N 400000000L
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

__attribute__((target("avx2,fma"))) static void *fma256(void *out) {
    __m256 acc[12], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps(i);
    for (long n = 0; n < N / 12 / 8; n++)
        for (int i = 0; i < 12; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    float t[8]; float s = 0;
    for (int i = 0; i < 12; i++) { _mm256_storeu_ps(t, acc[i]); s += t[0]; }
    *(float *)out = s; return 0;
}
__attribute__((target("avx512f"))) static void *fma512(void *out) {
    __m512 acc[12], x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps(i);
    for (long n = 0; n < N / 12 / 16; n++)
        for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    float s = 0; for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(acc[i]);
    *(float *)out = s; return 0;
}
__attribute__((target("avx512f,avx512bf16"))) static void *dpbf16(void *out) {
    __m512 acc[12];
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps(i);
    for (long n = 0; n < N / 12 / 32; n++)
        for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
    float s = 0; for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(acc[i]);
    *(float *)out = s; return 0;
}
// GFLOP/s (2 per multiply-add) of `threads` copies of f, each doing N multiply-adds.
static double run(void *(*f)(void *), int threads) {
    pthread_t p[2]; float r[2]; double t = now();
    for (int i = 0; i < threads; i++) pthread_create(&p[i], 0, f, &r[i]);
    for (int i = 0; i < threads; i++) pthread_join(p[i], 0);
    return 2.0 * N * threads / (now() - t) / 1e9;
}

typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } __attribute__((packed)) tilecfg;
__attribute__((target("amx-tile,amx-bf16"))) static double amx(long iters) {
    tilecfg c; memset(&c, 0, sizeof c); c.palette = 1;
    for (int t = 0; t < 8; t++) { c.rows[t] = 16; c.colsb[t] = 64; }
    _tile_loadconfig(&c);
    static uint16_t a[16 * 32], b[16 * 32];
    for (int i = 0; i < 16 * 32; i++) { a[i] = 0x3f80; b[i] = 0x3380; }
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, a, 64); _tile_loadd(5, b, 64); _tile_loadd(6, a, 64); _tile_loadd(7, b, 64);
    double t = now();
    for (long i = 0; i < iters; i++) {
        _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 6, 5); _tile_dpbf16ps(3, 6, 7);
    }
    t = now() - t;
    _tile_release();
    return 2.0 * 4 * iters * 16 * 16 * 32 / t / 1e9;
}

int main(void) {
    unsigned a, b, c, d;
    __cpuid_count(7, 0, a, b, c, d);
    int has512 = (b >> 16) & 1, amx_ok = ((d >> 24) & 1) && ((d >> 22) & 1);
    __cpuid_count(7, 1, a, b, c, d);
    int bf16 = (a >> 5) & 1;
    for (int th = 1; th <= 2; th++) printf("fma avx2    %d thread(s): %6.1f GFLOP/s\n", th, run(fma256, th));
    if (has512) for (int th = 1; th <= 2; th++) printf("fma avx512  %d thread(s): %6.1f GFLOP/s\n", th, run(fma512, th));
    if (bf16) printf("vdpbf16ps   1 thread:    %6.1f GFLOP/s\n", run(dpbf16, 1));
    if (amx_ok && syscall(SYS_arch_prctl, 0x1023, 18) == 0) printf("amx bf16    1 thread:    %6.1f GFLOP/s\n", amx(4000000));
    return 0;
}
