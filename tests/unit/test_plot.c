/* test_plot.c - loss.svg: every point plotted, in the frame, extremes at the frame edges. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/t.h"
#include "train/plot.h"

/* Parse the first polyline's points into xs/ys; returns the count. */
static int points(const char *svg, double *xs, double *ys, int max)
{
	const char *p = strstr(svg, "points=\"");
	int n = 0;

	if (!p)
		return -1;
	p += 8;
	while (*p && *p != '"' && n < max) {
		char *e;
		xs[n] = strtod(p, &e);
		if (*e != ',')
			return -1;
		ys[n] = strtod(e + 1, &e);
		n++;
		p = e;
		while (*p == ' ')
			p++;
	}
	return n;
}

TEST(every_point_in_frame)
{
	double x[50], y[50], px[64], py[64];
	struct lora_series s = { "train", "#000", x, y, 50 };
	struct lora_err err;
	char *svg;
	int n;

	for (int i = 0; i < 50; i++) {
		x[i] = i + 1;
		y[i] = 5.0 - i * 0.08;  /* falls from 5.0 to 1.08 */
	}
	svg = lora_plot_svg("t", "step", "loss", &s, 1, &err);
	CHECK(svg != NULL);
	if (!svg)
		return;
	n = points(svg, px, py, 64);
	CHECK(n == 50);
	/* Plot frame is x in [72, 696], y in [44, 384] (W=720, H=440, margins 72/24/44/56). */
	for (int i = 0; i < n; i++) {
		CHECK(px[i] >= 72 && px[i] <= 696);
		CHECK(py[i] >= 44 && py[i] <= 384);
	}
	CHECK_NEAR(px[0], 72, 0.11, 0);
	CHECK_NEAR(px[49], 696, 0.11, 0);
	CHECK(py[0] < py[49]);  /* higher loss is drawn higher up */
	CHECK(strstr(svg, ">step<") && strstr(svg, ">loss<"));
	free(svg);
}

TEST(nan_points_skipped_and_text_escaped)
{
	double x[3] = { 1, 2, 3 }, y[3] = { 1, 0.0 / 0.0, 2 }, px[8], py[8];
	struct lora_series s = { "a<b", "#000", x, y, 3 };
	struct lora_err err;
	char *svg = lora_plot_svg("x&y", "step", "loss", &s, 1, &err);

	CHECK(svg && points(svg, px, py, 8) == 2);
	CHECK(svg && strstr(svg, "a&lt;b") && strstr(svg, "x&amp;y"));
	free(svg);
}

int main(void)
{
	RUN(every_point_in_frame);
	RUN(nan_points_skipped_and_text_escaped);
	return t_done();
}
