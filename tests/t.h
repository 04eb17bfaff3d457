/*
 * t.h - the smallest test harness that can fail.
 *
 *     TEST(parses_bf16) { CHECK(lora_bf16_to_f32(0x3f80) == 1.0f); }
 *     int main(void) { RUN(parses_bf16); return t_done(); }
 *
 * Each TEST prints "PASS name" or "FAIL name" (with the failed checks above
 * it); tests/run.sh counts those lines over every test program and script.
 * Fixtures are found through $LORA_FIXTURES (default tests/fixtures).
 */
#ifndef LORA_T_H
#define LORA_T_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_failed_checks, t_pass, t_fail;

#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
			t_failed_checks++;                                              \
		}                                                                       \
	} while (0)

#define CHECKF(cond, ...)                                                               \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                                   \
			fputc('\n', stderr);                                            \
			t_failed_checks++;                                              \
		}                                                                       \
	} while (0)

/* |a - b| <= abs + rel * |b|, b being the reference */
#define CHECK_NEAR(a, b, abs_tol, rel_tol)                                                \
	CHECKF(fabs((double)(a) - (double)(b)) <= (abs_tol) + (rel_tol) * fabs((double)(b)), \
	       "%s = %.9g, %s = %.9g", #a, (double)(a), #b, (double)(b))

#define TEST(name) static void test_##name(void)

#define RUN(name)                                                                      \
	do {                                                                           \
		int before = t_failed_checks;                                          \
		test_##name();                                                         \
		if (t_failed_checks == before) {                                       \
			printf("PASS %s\n", #name);                                    \
			t_pass++;                                                      \
		} else {                                                               \
			printf("FAIL %s\n", #name);                                    \
			t_fail++;                                                      \
		}                                                                      \
		fflush(stdout);                                                        \
	} while (0)

static inline const char *t_fixtures(void)
{
	const char *d = getenv("LORA_FIXTURES");
	return d ? d : "tests/fixtures";
}

/* malloc'd "<fixtures>/<rel>" */
static inline char *t_fixture(const char *rel)
{
	const char *d = t_fixtures();
	char *p = (char *)malloc(strlen(d) + strlen(rel) + 2);
	if (!p)
		abort();
	sprintf(p, "%s/%s", d, rel);
	return p;
}

static inline int t_done(void)
{
	return t_fail ? 1 : 0;
}

#endif
