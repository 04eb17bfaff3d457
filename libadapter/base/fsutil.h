/*
 * fsutil.h - files written so that a crash never leaves half of one behind.
 *
 * The one pattern for every file lora writes: create a temporary file beside
 * the final path, write it, fsync it, rename it over the final name, fsync the
 * directory.  A reader sees the old file or the new one, never a mix.
 *
 *     struct lora_tmpfile t;
 *     if (lora_tmp_open(&t, "out/config.json", 0644, err) < 0) return -1;
 *     if (lora_write_all(t.fd, data, len, t.tmp_path, err) < 0) { lora_tmp_abort(&t); return -1; }
 *     return lora_tmp_commit(&t, err);
 */
#ifndef LORA_FSUTIL_H
#define LORA_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "libadapter/base/err.h"

struct lora_tmpfile {
	int fd;
	char *tmp_path;    /* "<dir>/.<base>.tmp.XXXXXX" */
	char *final_path;
};

int lora_tmp_open(struct lora_tmpfile *t, const char *final_path, mode_t mode, struct lora_err *err);
/* fsync, rename over final_path, fsync the directory; frees t.  On error the temp file is removed. */
int lora_tmp_commit(struct lora_tmpfile *t, struct lora_err *err);
/* Remove the temp file and free t (safe to call twice). */
void lora_tmp_abort(struct lora_tmpfile *t);

/* Write all of buf; `what` names the file in the error.  ENOSPC reported as "no space left". */
int lora_write_all(int fd, const void *buf, size_t len, const char *what, struct lora_err *err);
int lora_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *what, struct lora_err *err);
/* Read exactly len bytes at off; a file that ends early is an error naming `what`. */
int lora_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *what, struct lora_err *err);
/* Copy len bytes from in_fd at in_off to the current position of out_fd (copy_file_range, else read/write). */
int lora_copy_range(int out_fd, int in_fd, uint64_t in_off, uint64_t len, const char *what, struct lora_err *err);

/* Write a whole file atomically. */
int lora_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, struct lora_err *err);
/* Read a whole regular file of at most max bytes; *out is NUL-terminated, free() it. */
int lora_read_file(const char *path, size_t max, char **out, size_t *len, struct lora_err *err);

int lora_fsync_dir(const char *dir, struct lora_err *err);
/* mkdir -p; existing directories are fine. */
int lora_mkdir_p(const char *path, mode_t mode, struct lora_err *err);
/* rm -rf of a directory tree we created (does not follow symlinks). */
int lora_rm_rf(const char *path, struct lora_err *err);

/* malloc'd "a/b"; NULL on allocation failure. */
char *lora_path_join(const char *a, const char *b);
/* malloc'd directory part of path ("." when none). */
char *lora_dirname(const char *path);
int lora_is_dir(const char *path);
int lora_is_file(const char *path);

/* SHA-256 (OpenSSL).  hex must hold 65 bytes. */
void lora_sha256_hex(const void *data, size_t len, char hex[65]);
int lora_sha256_file(const char *path, char hex[65], uint64_t *size, struct lora_err *err);

#endif
