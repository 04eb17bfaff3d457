/*
 * package.h - the .lora package: a POSIX tar file (lora-package(5)).
 *
 * The archive, entry by entry:
 *   1. manifest.json                 first, at most 1 MiB (manifest.h)
 *   2. manifest.json.sig             the SSHSIG of manifest.json (sshsig.h), at most
 *                                    16 KiB; absent only in an unsigned package
 *   3. adapter_config.json, adapter_model.safetensors, then optional files
 *      (README.md, training_log.jsonl, loss.svg, ...): the manifest's "files",
 *      in that order when lora writes them.
 * Every entry is a regular file with a plain name (manifest.h:
 * lora_pkg_name_ok; one leading "./" is tolerated on reading), mode 0644,
 * owner 0:0, mtime = the manifest's "created".  lora writes pax-restricted
 * tar (ustar headers, pax records only where ustar cannot say it), no
 * compression, so `tar -x` gives a folder that PEFT loads.
 *
 * The reader is for hostile input.  It refuses: absolute names, '..', any
 * '/', other odd names; links (symbolic or hard), directories, devices,
 * FIFOs and sparse entries; a name seen twice; manifest.json not first;
 * more than LORA_PKG_MAX_ENTRIES entries; an entry larger than its limit
 * (checked from the header, before any data is read); a truncated or
 * malformed archive.  Extracted files go only into the caller's directory,
 * created with O_EXCL|O_NOFOLLOW.  Every refusal is LORA_EVERIFY.
 */
#ifndef LORA_PACKAGE_H
#define LORA_PACKAGE_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "libadapter/store/manifest.h"

#define LORA_PKG_MAX_ENTRIES 64
#define LORA_PKG_MAX_SIG 16384ull
#define LORA_PKG_MAX_FILE (32ull << 30)     /* 32 GiB per file */
#define LORA_PKG_MAX_TOTAL (64ull << 30)    /* 64 GiB per package */

struct lora_pkg_entry {
	char name[104];
	uint64_t size;
	char sha256[65];              /* hex of the bytes read */
	char *path;                   /* extracted file (or a store blob), malloc'd; NULL when not kept */
};

struct lora_pkg {
	char *manifest;               /* manifest.json bytes, NUL-terminated */
	size_t manifest_len;
	char *sig;                    /* manifest.json.sig bytes, or NULL when absent */
	size_t sig_len;
	size_t n_entries;             /* the other files, in archive order */
	struct lora_pkg_entry *entries;
};

/*
 * Read a package.  With extract_dir (an empty directory the caller owns),
 * each file other than manifest.json and its signature is written there;
 * otherwise only hashed.  `label` names the package in errors (NULL: path).
 */
int lora_pkg_read(const char *path, const char *extract_dir, struct lora_pkg *out, struct lora_err *err);
/* The same, calling progress(ctx, bytes read, file size) as the archive is read (progress may be NULL). */
typedef void (*lora_progress_fn)(void *ctx, double done, double total);
int lora_pkg_read_progress(const char *path, const char *extract_dir, struct lora_pkg *out,
			   lora_progress_fn progress, void *ctx, struct lora_err *err);
int lora_pkg_read_mem(const void *buf, size_t len, const char *label, const char *extract_dir,
		      struct lora_pkg *out, struct lora_err *err);
void lora_pkg_free(struct lora_pkg *p);

/*
 * Does the manifest describe exactly these files?  Every listed file present
 * with its size and sha256, and nothing else.  LORA_EVERIFY naming the file.
 */
int lora_pkg_match_files(const struct lora_manifest *m, const struct lora_pkg_entry *e, size_t n,
			 struct lora_err *err);

/*
 * Write a package to fd: manifest.json, manifest.json.sig (when sig), then
 * files[] (each read from its path), all with the given mtime.
 */
int lora_pkg_write_fd(int fd, const char *what, const char *manifest, size_t manifest_len,
		      const char *sig, size_t sig_len, const struct lora_pkg_entry *files, size_t n,
		      int64_t mtime, struct lora_err *err);

/* Seconds since the epoch of an RFC 3339 "YYYY-MM-DDTHH:MM:SSZ" (0 when unreadable). */
int64_t lora_pkg_mtime(const char *created);

#endif
