/* package.c - read (hostile) and write .lora packages with libarchive (see package.h). */
#define _GNU_SOURCE
#include "libadapter/store/package.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>

#include "libadapter/base/fsutil.h"

#define CHUNK (256u << 10)

/* Reports reading progress of the archive being read (one at a time per thread). */
static __thread struct {
	lora_progress_fn fn;
	void *ctx;
	double total;
} prog;

static int refuse(struct lora_err *err, const char *label, const char *fmt, const char *name)
{
	char safe[120];
	size_t i = 0;

	/* Names come from the archive: show them without control bytes. */
	for (; name && name[i] && i < sizeof(safe) - 4; i++)
		safe[i] = (unsigned char)name[i] < 0x20 || name[i] == 0x7f ? '?' : name[i];
	safe[i] = 0;
	if (name && name[i])
		strcpy(safe + i, "...");
	char msg[300];
	snprintf(msg, sizeof(msg), fmt, safe);
	return lora_errc(err, LORA_EVERIFY, "'%s': %s", label, msg);
}

void lora_pkg_free(struct lora_pkg *p)
{
	free(p->manifest);
	free(p->sig);
	for (size_t i = 0; i < p->n_entries; i++)
		free(p->entries[i].path);
	free(p->entries);
	memset(p, 0, sizeof(*p));
}

/* Check an entry's name and type; *name_out is the name without a leading "./". */
static int check_entry(struct archive_entry *e, const char *label, const char **name_out,
		       struct lora_err *err)
{
	const char *name = archive_entry_pathname(e);
	mode_t type = archive_entry_filetype(e);

	if (!name || !*name)
		return refuse(err, label, "an entry has no name%s", "");
	if (name[0] == '/')
		return refuse(err, label, "entry '%s' has an absolute path", name);
	if (!strcmp(name, "..") || !strncmp(name, "../", 3) || strstr(name, "/../") ||
	    (strlen(name) >= 3 && !strcmp(name + strlen(name) - 3, "/..")))
		return refuse(err, label, "entry '%s' has '..' in its path", name);
	if (archive_entry_hardlink(e))
		return refuse(err, label, "entry '%s' is a hard link", name);
	if (type == AE_IFLNK || archive_entry_symlink(e))
		return refuse(err, label, "entry '%s' is a symbolic link", name);
	if (type == AE_IFCHR || type == AE_IFBLK)
		return refuse(err, label, "entry '%s' is a device", name);
	if (type == AE_IFIFO)
		return refuse(err, label, "entry '%s' is a FIFO", name);
	if (type == AE_IFDIR)
		return refuse(err, label, "entry '%s' is a directory", name);
	if (type != AE_IFREG)
		return refuse(err, label, "entry '%s' is not a regular file", name);
	if (archive_entry_sparse_count(e) > 0)
		return refuse(err, label, "entry '%s' is a sparse file", name);
	if (!strncmp(name, "./", 2))
		name += 2;
	if (strchr(name, '/'))
		return refuse(err, label, "entry '%s' is in a subdirectory; packages are flat", name);
	if (!lora_pkg_name_ok(name))
		return refuse(err, label, "entry '%s' has a name not allowed in a package", name);
	if (!archive_entry_size_is_set(e) || archive_entry_size(e) < 0)
		return refuse(err, label, "entry '%s' has no size", name);
	*name_out = name;
	return 0;
}

/*
 * Read the current entry's data: into *mem (when mem) or to fd (when fd >= 0),
 * hashing it.  Exactly `size` bytes must arrive.
 */
static int read_data(struct archive *a, const char *label, const char *name, uint64_t size, char **mem,
		     int fd, char hex[65], struct lora_err *err)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char *chunk = malloc(CHUNK), dig[32];
	uint64_t got = 0;
	int rc = -1;

	if (mem) {
		*mem = malloc(size + 1);
		if (!*mem)
			goto oom;
	}
	if (!md || !chunk)
		goto oom;
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	for (;;) {
		la_ssize_t n = archive_read_data(a, chunk, CHUNK);
		if (n < 0) {
			lora_errc(err, LORA_EVERIFY, "'%s': cannot read entry '%s': %s", label, name,
				  archive_error_string(a) ? archive_error_string(a) : "archive error");
			goto out;
		}
		if (n == 0)
			break;
		if ((uint64_t)n > size - got) {
			refuse(err, label, "entry '%s' holds more data than its header says", name);
			goto out;
		}
		EVP_DigestUpdate(md, chunk, (size_t)n);
		if (prog.fn)
			prog.fn(prog.ctx, (double)archive_filter_bytes(a, -1), prog.total);
		if (mem)
			memcpy(*mem + got, chunk, (size_t)n);
		if (fd >= 0 && lora_write_all(fd, chunk, (size_t)n, name, err) < 0)
			goto out;
		got += (uint64_t)n;
	}
	if (got != size) {
		refuse(err, label, "entry '%s' is truncated", name);
		goto out;
	}
	if (mem)
		(*mem)[size] = 0;
	EVP_DigestFinal_ex(md, dig, NULL);
	for (int i = 0; i < 32; i++)
		sprintf(hex + 2 * i, "%02x", dig[i]);
	rc = 0;
	goto out;
oom:
	lora_errf(err, "out of memory reading '%s'", label);
out:
	if (rc < 0 && mem) {
		free(*mem);
		*mem = NULL;
	}
	EVP_MD_CTX_free(md);
	free(chunk);
	return rc;
}

static int seen_before(const struct lora_pkg *p, const char *name)
{
	if (!strcmp(name, LORA_PKG_MANIFEST))
		return p->manifest != NULL;
	if (!strcmp(name, LORA_PKG_SIG))
		return p->sig != NULL;
	for (size_t i = 0; i < p->n_entries; i++)
		if (!strcmp(p->entries[i].name, name))
			return 1;
	return 0;
}

static int extract_one(struct archive *a, const char *label, const char *dir, const char *name,
		       struct lora_pkg_entry *pe, struct lora_err *err)
{
	char *path = NULL;
	int fd = -1, rc;

	if (dir) {
		path = lora_path_join(dir, name);
		if (!path)
			return lora_errf(err, "out of memory");
		fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
		if (fd < 0) {
			rc = lora_errf(err, "cannot create '%s': %s", path, strerror(errno));
			free(path);
			return rc;
		}
	}
	rc = read_data(a, label, name, pe->size, NULL, fd, pe->sha256, err);
	if (fd >= 0) {
		if (rc == 0 && fsync(fd) < 0)
			rc = lora_errf(err, "cannot write '%s': %s", path, strerror(errno));
		close(fd);
		if (rc < 0)
			unlink(path);
	}
	if (rc < 0) {
		free(path);
		return -1;
	}
	pe->path = path;
	return 0;
}

static int read_archive(struct archive *a, const char *label, const char *dir, struct lora_pkg *out,
			struct lora_err *err)
{
	struct archive_entry *e;
	uint64_t total = 0;
	size_t count = 0;
	int r;

	out->entries = calloc(LORA_PKG_MAX_ENTRIES, sizeof(*out->entries));
	if (!out->entries)
		return lora_errf(err, "out of memory");
	while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK || r == ARCHIVE_WARN) {
		const char *name = NULL;
		uint64_t size;
		char hex[65];

		if (r == ARCHIVE_WARN)
			return lora_errc(err, LORA_EVERIFY, "'%s': malformed tar entry: %s", label,
					 archive_error_string(a) ? archive_error_string(a) : "warning");
		if (++count > LORA_PKG_MAX_ENTRIES)
			return refuse(err, label, "more than 64 entries%s", "");
		if (check_entry(e, label, &name, err) < 0)
			return -1;
		size = (uint64_t)archive_entry_size(e);
		if (count == 1 && strcmp(name, LORA_PKG_MANIFEST))
			return refuse(err, label, "the first entry is '%s', not manifest.json (not a lora package?)",
				      name);
		if (seen_before(out, name))
			return refuse(err, label, "entry '%s' appears twice", name);
		if (!strcmp(name, LORA_PKG_MANIFEST)) {
			if (size > LORA_MANIFEST_MAX)
				return refuse(err, label, "entry '%s' is larger than its limit of 1 MiB", name);
			if (read_data(a, label, name, size, &out->manifest, -1, hex, err) < 0)
				return -1;
			out->manifest_len = size;
			continue;
		}
		if (!strcmp(name, LORA_PKG_SIG)) {
			if (size > LORA_PKG_MAX_SIG)
				return refuse(err, label, "entry '%s' is larger than its limit of 16 KiB", name);
			if (read_data(a, label, name, size, &out->sig, -1, hex, err) < 0)
				return -1;
			out->sig_len = size;
			continue;
		}
		if (size > LORA_PKG_MAX_FILE)
			return refuse(err, label, "entry '%s' is larger than the limit of 32 GiB per file", name);
		total += size;
		if (total > LORA_PKG_MAX_TOTAL)
			return refuse(err, label, "entries add up to more than the limit of 64 GiB%s", "");
		struct lora_pkg_entry *pe = &out->entries[out->n_entries];
		snprintf(pe->name, sizeof(pe->name), "%s", name);
		pe->size = size;
		if (extract_one(a, label, dir, name, pe, err) < 0)
			return -1;
		out->n_entries++;
	}
	if (r != ARCHIVE_EOF)
		return lora_errc(err, LORA_EVERIFY, "'%s': %s: %s", label,
				 count ? "truncated or malformed archive" : "not a tar archive",
				 archive_error_string(a) ? archive_error_string(a) : "read error");
	if (!out->manifest)
		return lora_errc(err, LORA_EVERIFY, "'%s': empty archive, no manifest.json", label);
	return 0;
}

static struct archive *new_reader(void)
{
	struct archive *a = archive_read_new();

	if (a)
		archive_read_support_format_tar(a);  /* ustar, pax, gnu; no compression filters */
	return a;
}

static int finish(struct archive *a, int rc, const char *dir, struct lora_pkg *out)
{
	archive_read_free(a);
	if (rc < 0) {
		/* nothing half-extracted stays behind */
		for (size_t i = 0; dir && i < out->n_entries; i++)
			if (out->entries[i].path)
				unlink(out->entries[i].path);
		lora_pkg_free(out);
	}
	return rc;
}

int lora_pkg_read(const char *path, const char *extract_dir, struct lora_pkg *out, struct lora_err *err)
{
	return lora_pkg_read_progress(path, extract_dir, out, NULL, NULL, err);
}

int lora_pkg_read_progress(const char *path, const char *extract_dir, struct lora_pkg *out,
			   lora_progress_fn progress, void *ctx, struct lora_err *err)
{
	struct archive *a;
	struct stat st;
	int fd, rc;

	memset(out, 0, sizeof(*out));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lora_errf(err, "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return lora_errf(err, "'%s' is not a regular file", path);
	}
	a = new_reader();
	if (!a) {
		close(fd);
		return lora_errf(err, "out of memory");
	}
	prog.fn = progress;
	prog.ctx = ctx;
	prog.total = (double)st.st_size;
	if (archive_read_open_fd(a, fd, 64 << 10) != ARCHIVE_OK) {
		rc = lora_errc(err, LORA_EVERIFY, "'%s': not a tar archive: %s", path,
			       archive_error_string(a) ? archive_error_string(a) : "unknown format");
	} else {
		rc = read_archive(a, path, extract_dir, out, err);
	}
	prog.fn = NULL;
	rc = finish(a, rc, extract_dir, out);
	close(fd);
	return rc;
}

int lora_pkg_read_mem(const void *buf, size_t len, const char *label, const char *extract_dir,
		      struct lora_pkg *out, struct lora_err *err)
{
	struct archive *a = new_reader();
	int rc;

	memset(out, 0, sizeof(*out));
	if (!a)
		return lora_errf(err, "out of memory");
	if (archive_read_open_memory(a, buf, len) != ARCHIVE_OK)
		rc = lora_errc(err, LORA_EVERIFY, "'%s': not a tar archive: %s", label,
			       archive_error_string(a) ? archive_error_string(a) : "unknown format");
	else
		rc = read_archive(a, label, extract_dir, out, err);
	return finish(a, rc, extract_dir, out);
}

int lora_pkg_match_files(const struct lora_manifest *m, const struct lora_pkg_entry *e, size_t n,
			 struct lora_err *err)
{
	for (size_t i = 0; i < n; i++) {
		const struct lora_manifest_file *f = lora_manifest_find(m, e[i].name);
		if (!f)
			return lora_errc(err, LORA_EVERIFY, "the package holds '%s', which the manifest "
					 "does not list", e[i].name);
		if (f->size != e[i].size)
			return lora_errc(err, LORA_EVERIFY, "'%s' is %llu bytes, the manifest says %llu",
					 e[i].name, (unsigned long long)e[i].size, (unsigned long long)f->size);
		if (strcmp(f->sha256, e[i].sha256))
			return lora_errc(err, LORA_EVERIFY, "sha256 of '%s' is %.16s..., the manifest "
					 "says %.16s... (the file was changed)", e[i].name, e[i].sha256, f->sha256);
	}
	for (size_t k = 0; k < m->n_files; k++) {
		size_t i = 0;
		while (i < n && strcmp(e[i].name, m->files[k].name))
			i++;
		if (i == n)
			return lora_errc(err, LORA_EVERIFY, "the manifest lists '%s', which the package "
					 "lacks", m->files[k].name);
	}
	return 0;
}

/* ---------------------------------------------------------------- writer */

struct wctx {
	int fd;
	const char *what;
	struct lora_err *err;
	int failed;
};

static la_ssize_t w_write(struct archive *a, void *cd, const void *buf, size_t n)
{
	struct wctx *w = cd;
	(void)a;
	if (lora_write_all(w->fd, buf, n, w->what, w->err) < 0) {
		w->failed = 1;
		return -1;
	}
	return (la_ssize_t)n;
}

static int add_header(struct archive *a, struct archive_entry *e, const char *name, uint64_t size,
		      int64_t mtime)
{
	archive_entry_clear(e);
	archive_entry_set_pathname(e, name);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, (la_int64_t)size);
	archive_entry_set_mtime(e, (time_t)mtime, 0);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	return archive_write_header(a, e) == ARCHIVE_OK ? 0 : -1;
}

static int add_mem(struct archive *a, struct archive_entry *e, const char *name, const char *data,
		   size_t len, int64_t mtime)
{
	if (add_header(a, e, name, len, mtime) < 0)
		return -1;
	return len && archive_write_data(a, data, len) != (la_ssize_t)len ? -1 : 0;
}

static int add_file(struct archive *a, struct archive_entry *e, const struct lora_pkg_entry *f,
		    int64_t mtime, struct lora_err *err)
{
	char *chunk;
	uint64_t left = f->size;
	int fd = open(f->path, O_RDONLY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return lora_errf(err, "cannot open '%s': %s", f->path, strerror(errno));
	chunk = malloc(CHUNK);
	if (!chunk || add_header(a, e, f->name, f->size, mtime) < 0)
		rc = -1;
	while (rc == 0 && left) {
		ssize_t n = read(fd, chunk, left < CHUNK ? (size_t)left : CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = lora_errf(err, "cannot read '%s': %s", f->path, n < 0 ? strerror(errno) : "file shrank");
			break;
		}
		if (archive_write_data(a, chunk, (size_t)n) != n)
			rc = -1;
		left -= (uint64_t)n;
	}
	free(chunk);
	close(fd);
	return rc;
}

int lora_pkg_write_fd(int fd, const char *what, const char *manifest, size_t manifest_len,
		      const char *sig, size_t sig_len, const struct lora_pkg_entry *files, size_t n,
		      int64_t mtime, struct lora_err *err)
{
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();
	struct wctx w = { fd, what, err, 0 };
	int rc = -1;

	lora_err_clear(err);
	if (!a || !e) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    archive_write_add_filter_none(a) != ARCHIVE_OK ||
	    archive_write_open2(a, &w, NULL, w_write, NULL, NULL) != ARCHIVE_OK)
		goto aerr;
	if (add_mem(a, e, LORA_PKG_MANIFEST, manifest, manifest_len, mtime) < 0)
		goto aerr;
	if (sig && add_mem(a, e, LORA_PKG_SIG, sig, sig_len, mtime) < 0)
		goto aerr;
	for (size_t i = 0; i < n; i++)
		if (add_file(a, e, &files[i], mtime, err) < 0)
			goto aerr;
	if (archive_write_close(a) != ARCHIVE_OK)
		goto aerr;
	rc = 0;
	goto out;
aerr:
	if (!w.failed && (!err || !err->msg[0]))
		lora_errf(err, "cannot write '%s': %s", what,
			  archive_error_string(a) ? archive_error_string(a) : "archive error");
out:
	archive_entry_free(e);
	if (a)
		archive_write_free(a);
	return rc;
}

int64_t lora_pkg_mtime(const char *created)
{
	struct tm tm = { 0 };
	char *end;

	if (!created)
		return 0;
	end = strptime(created, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!end)
		return 0;
	return (int64_t)timegm(&tm);
}
