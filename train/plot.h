/*
 * plot.h - loss.svg: train and eval loss against step, as a self-contained
 * SVG (labelled axes, round tick values, a legend), written atomically.
 */
#ifndef LORA_TRAIN_PLOT_H
#define LORA_TRAIN_PLOT_H

#include <stddef.h>

#include "libadapter/base/err.h"

struct lora_series {
	const char *label;     /* "train", "eval" */
	const char *color;     /* "#1f77b4" */
	const double *x, *y;   /* step, loss */
	size_t n;
};

/* Render the series into a malloc'd SVG document. */
char *lora_plot_svg(const char *title, const char *xlabel, const char *ylabel,
		    const struct lora_series *s, size_t ns, struct lora_err *err);
/* Render and write to path atomically. */
int lora_plot_svg_file(const char *path, const char *title, const struct lora_series *s, size_t ns,
		       struct lora_err *err);

#endif
