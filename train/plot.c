/* plot.c - loss curves as SVG (see plot.h). */
#include "train/plot.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"

#define W 720
#define H 440
#define ML 72   /* margins: room for tick labels and axis titles */
#define MR 24
#define MT 44
#define MB 56

/* A "nice" tick step (1, 2 or 5 × 10^k) giving about n ticks over span. */
static double nice_step(double span, int n)
{
	double raw = span / n, p = pow(10, floor(log10(raw))), f = raw / p;

	return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

static void xml_text(struct lora_buf *b, const char *s)
{
	for (; *s; s++) {
		if (*s == '<') lora_buf_puts(b, "&lt;");
		else if (*s == '>') lora_buf_puts(b, "&gt;");
		else if (*s == '&') lora_buf_puts(b, "&amp;");
		else lora_buf_add(b, s, 1);
	}
}

static void bounds(const struct lora_series *s, size_t ns, double *x0, double *x1, double *y0,
		   double *y1)
{
	*x0 = *y0 = INFINITY;
	*x1 = *y1 = -INFINITY;
	for (size_t k = 0; k < ns; k++)
		for (size_t i = 0; i < s[k].n; i++) {
			if (!isfinite(s[k].x[i]) || !isfinite(s[k].y[i]))
				continue;
			*x0 = fmin(*x0, s[k].x[i]);
			*x1 = fmax(*x1, s[k].x[i]);
			*y0 = fmin(*y0, s[k].y[i]);
			*y1 = fmax(*y1, s[k].y[i]);
		}
	if (!isfinite(*x0)) {
		*x0 = 0, *x1 = 1, *y0 = 0, *y1 = 1;
	}
	if (*x1 - *x0 < 1e-12)
		*x1 = *x0 + 1;
	if (*y1 - *y0 < 1e-12) {
		*y0 -= 0.5;
		*y1 += 0.5;
	}
}

static void axes(struct lora_buf *b, double x0, double x1, double y0, double y1, const char *xl,
		 const char *yl)
{
	double pw = W - ML - MR, ph = H - MT - MB, st;

	lora_buf_printf(b, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n",
			ML, MT, pw, ph);
	st = nice_step(x1 - x0, 6);
	for (double v = ceil(x0 / st) * st; v <= x1 + st * 1e-9; v += st) {
		double px = ML + (v - x0) / (x1 - x0) * pw;
		lora_buf_printf(b, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/>\n"
				   "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%g</text>\n",
				px, MT, px, MT + ph, px, MT + ph + 18, v);
	}
	st = nice_step(y1 - y0, 5);
	for (double v = ceil(y0 / st) * st; v <= y1 + st * 1e-9; v += st) {
		double py = MT + ph - (v - y0) / (y1 - y0) * ph;
		lora_buf_printf(b, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
				   "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
				ML, py, ML + pw, py, ML - 6, py + 4, fabs(v) < st * 1e-6 ? 0 : v);
	}
	lora_buf_printf(b, "<text x=\"%.0f\" y=\"%d\" text-anchor=\"middle\">", ML + pw / 2, H - 14);
	xml_text(b, xl);
	lora_buf_printf(b, "</text>\n<text transform=\"translate(18,%.0f) rotate(-90)\" text-anchor=\"middle\">",
			MT + ph / 2);
	xml_text(b, yl);
	lora_buf_puts(b, "</text>\n");
}

char *lora_plot_svg(const char *title, const char *xlabel, const char *ylabel,
		    const struct lora_series *s, size_t ns, struct lora_err *err)
{
	struct lora_buf b = LORA_BUF_INIT;
	double x0, x1, y0, y1, pw = W - ML - MR, ph = H - MT - MB;
	char *out;

	bounds(s, ns, &x0, &x1, &y0, &y1);
	y0 -= (y1 - y0) * 0.05;
	y1 += (y1 - y0) * 0.05;
	lora_buf_printf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
			    "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
			    "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
			W, H, W, H);
	lora_buf_printf(&b, "<text x=\"%d\" y=\"26\" text-anchor=\"middle\" font-size=\"15\">", W / 2);
	xml_text(&b, title);
	lora_buf_puts(&b, "</text>\n");
	axes(&b, x0, x1, y0, y1, xlabel, ylabel);
	for (size_t k = 0; k < ns; k++) {
		int started = 0;
		lora_buf_printf(&b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" points=\"",
				s[k].color);
		for (size_t i = 0; i < s[k].n; i++) {
			if (!isfinite(s[k].x[i]) || !isfinite(s[k].y[i]))
				continue;
			lora_buf_printf(&b, "%s%.1f,%.1f", started ? " " : "",
					ML + (s[k].x[i] - x0) / (x1 - x0) * pw,
					MT + ph - (s[k].y[i] - y0) / (y1 - y0) * ph);
			started = 1;
		}
		lora_buf_puts(&b, "\"/>\n");
		if (s[k].n < 40)  /* sparse series (eval): mark the points */
			for (size_t i = 0; i < s[k].n; i++)
				if (isfinite(s[k].x[i]) && isfinite(s[k].y[i]))
					lora_buf_printf(&b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
							ML + (s[k].x[i] - x0) / (x1 - x0) * pw,
							MT + ph - (s[k].y[i] - y0) / (y1 - y0) * ph, s[k].color);
		/* legend, top right */
		lora_buf_printf(&b, "<line x1=\"%.0f\" y1=\"%zu\" x2=\"%.0f\" y2=\"%zu\" stroke=\"%s\" stroke-width=\"3\"/>"
				    "<text x=\"%.0f\" y=\"%zu\">",
				ML + pw - 110, (size_t)MT + 16 + 18 * k, ML + pw - 86, (size_t)MT + 16 + 18 * k,
				s[k].color, ML + pw - 80, (size_t)MT + 20 + 18 * k);
		xml_text(&b, s[k].label);
		lora_buf_puts(&b, "</text>\n");
	}
	lora_buf_puts(&b, "</svg>\n");
	out = lora_buf_take(&b);
	if (!out)
		lora_errf(err, "out of memory");
	return out;
}

int lora_plot_svg_file(const char *path, const char *title, const struct lora_series *s, size_t ns,
		       struct lora_err *err)
{
	char *svg = lora_plot_svg(title, "step", "loss", s, ns, err);
	int rc;

	if (!svg)
		return -1;
	rc = lora_write_file_atomic(path, svg, strlen(svg), 0644, err);
	free(svg);
	return rc;
}
