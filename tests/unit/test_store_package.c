/*
 * test_store_package.c - the .lora reader on hostile archives built in memory
 * (libarchive's writer, or raw tar headers where it refuses to write the
 * lie), the writer round trip, and the manifest/file-set match.
 */
#include "tests/t.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/store/package.h"

#define CAP (4u << 20)

static unsigned char *buf;
static size_t used;

static struct archive *writer(void)
{
	struct archive *a = archive_write_new();
	archive_write_set_format_pax_restricted(a);
	archive_write_set_bytes_per_block(a, 512);
	archive_write_open_memory(a, buf, CAP, &used);
	return a;
}

enum kind { REG, SYM, HARD, CHR, BLK, FIFO, DIRE };

static void add(struct archive *a, const char *name, enum kind k, const char *data, size_t len)
{
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, name);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, k == REG ? (la_int64_t)len : 0);
	switch (k) {
	case REG: archive_entry_set_filetype(e, AE_IFREG); break;
	case SYM: archive_entry_set_filetype(e, AE_IFLNK); archive_entry_set_symlink(e, "/etc/passwd"); break;
	case HARD: archive_entry_set_filetype(e, AE_IFREG); archive_entry_set_hardlink(e, "manifest.json"); break;
	case CHR: archive_entry_set_filetype(e, AE_IFCHR); archive_entry_set_rdev(e, 0x103); break;
	case BLK: archive_entry_set_filetype(e, AE_IFBLK); archive_entry_set_rdev(e, 0x800); break;
	case FIFO: archive_entry_set_filetype(e, AE_IFIFO); break;
	case DIRE: archive_entry_set_filetype(e, AE_IFDIR); break;
	}
	if (archive_write_header(a, e) != ARCHIVE_OK)
		fprintf(stderr, "  writer: %s\n", archive_error_string(a));
	if (k == REG && len)
		archive_write_data(a, data, len);
	archive_entry_free(e);
}

static void finish(struct archive *a)
{
	archive_write_close(a);
	archive_write_free(a);
}

#define MAN "{\"lora_package\": 1}"

/* Read buf[0..used) and expect a refusal mentioning `what`. */
static void expect_refused(const char *what, const char *dir)
{
	struct lora_pkg p;
	struct lora_err err = { 0 };
	int rc = lora_pkg_read_mem(buf, used, "h.lora", dir, &p, &err);
	CHECKF(rc < 0, "accepted (wanted '%s')", what);
	CHECKF(err.code == LORA_EVERIFY && strstr(err.msg, what), "wanted '%s', got '%s'", what, err.msg);
	if (dir) {  /* nothing left behind in the extraction folder */
		DIR *d = opendir(dir);
		struct dirent *de;
		int n = 0;
		while (d && (de = readdir(d)))
			n += de->d_name[0] != '.';
		if (d)
			closedir(d);
		CHECKF(n == 0, "%d files left in %s after refusing (%s)", n, dir, what);
	}
}

TEST(hostile_entries)
{
	static const struct {
		const char *name;
		enum kind k;
		const char *err;
	} cases[] = {
		{ "../x", REG, "'..' in its path" },
		{ "a/../../x", REG, "'..' in its path" },
		{ "..", REG, "'..' in its path" },
		{ "/etc/x", REG, "absolute path" },
		{ "sub/adapter_config.json", REG, "subdirectory" },
		{ "adapter_config.json", SYM, "symbolic link" },
		{ "adapter_config.json", HARD, "hard link" },
		{ "null", CHR, "is a device" },
		{ "sda", BLK, "is a device" },
		{ "fifo", FIFO, "is a FIFO" },
		{ "d", DIRE, "is a directory" },
		{ ".hidden", REG, "not allowed" },
		{ "bad\x01name", REG, "not allowed" },
		{ "manifest.json", REG, "appears twice" },
	};
	char dir[] = "/tmp/lora-t-pkg.XXXXXX";
	CHECK(mkdtemp(dir) != NULL);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct archive *a = writer();
		add(a, "manifest.json", REG, MAN, strlen(MAN));
		add(a, "adapter_model.safetensors", REG, "weights", 7);  /* extracted, then removed */
		add(a, cases[i].name, cases[i].k, "x", 1);
		finish(a);
		expect_refused(cases[i].err, dir);
	}
	lora_rm_rf(dir, NULL);
}

TEST(manifest_must_come_first)
{
	struct archive *a = writer();
	add(a, "adapter_config.json", REG, "{}", 2);
	add(a, "manifest.json", REG, MAN, strlen(MAN));
	finish(a);
	expect_refused("not manifest.json", NULL);
	a = writer();
	finish(a);
	expect_refused("", NULL);  /* empty archive */
}

TEST(limits)
{
	struct archive *a = writer();
	char *big = calloc(1, LORA_MANIFEST_MAX + 1);
	add(a, "manifest.json", REG, big, LORA_MANIFEST_MAX + 1);
	finish(a);
	expect_refused("limit of 1 MiB", NULL);
	a = writer();
	add(a, "manifest.json", REG, MAN, strlen(MAN));
	add(a, "manifest.json.sig", REG, big, LORA_PKG_MAX_SIG + 1);
	finish(a);
	expect_refused("limit of 16 KiB", NULL);
	free(big);
	a = writer();
	add(a, "manifest.json", REG, MAN, strlen(MAN));
	for (int i = 0; i < 64; i++) {
		char n[16];
		snprintf(n, sizeof(n), "f%d", i);
		add(a, n, REG, "x", 1);
	}
	finish(a);
	expect_refused("more than 64 entries", NULL);
}

/* A ustar header with a GNU base-256 size: lets the archive claim any size. */
static void raw_header(unsigned char h[512], const char *name, uint64_t size)
{
	unsigned sum = 0;
	memset(h, 0, 512);
	strcpy((char *)h, name);
	memcpy(h + 100, "0000644", 7);
	memcpy(h + 108, "0000000", 7);
	memcpy(h + 116, "0000000", 7);
	h[124] = 0x80;  /* base-256 */
	for (int i = 0; i < 8; i++)
		h[135 - i] = (unsigned char)(size >> (8 * i));
	memcpy(h + 136, "14737624600", 11);
	h[156] = '0';
	memcpy(h + 257, "ustar", 6);
	memcpy(h + 263, "00", 2);
	memset(h + 148, ' ', 8);
	for (int i = 0; i < 512; i++)
		sum += h[i];
	snprintf((char *)h + 148, 8, "%06o", sum);
	h[155] = ' ';
}

TEST(declared_100_gb)
{
	unsigned char *p = buf;
	char dir[] = "/tmp/lora-t-huge.XXXXXX";

	raw_header(p, "manifest.json", strlen(MAN));
	memset(p + 512, 0, 512);
	memcpy(p + 512, MAN, strlen(MAN));
	raw_header(p + 1024, "adapter_model.safetensors", 100000000000ull);
	memset(p + 1536, 'w', 512);
	used = 2048;
	CHECK(mkdtemp(dir) != NULL);
	expect_refused("larger than the limit of 32 GiB", dir);
	lora_rm_rf(dir, NULL);
	/* the same header with an honest size of 3 reads fine */
	raw_header(p + 1024, "adapter_model.safetensors", 3);
	memset(p + 2048, 0, 1024);
	used = 3072;
	struct lora_pkg pk;
	struct lora_err err = { 0 };
	CHECKF(lora_pkg_read_mem(buf, used, "h", NULL, &pk, &err) == 0, "%s", err.msg);
	CHECK(pk.n_entries == 1 && pk.entries[0].size == 3);
	lora_pkg_free(&pk);
}

TEST(truncated_and_garbage)
{
	struct archive *a = writer();
	char *w = malloc(100000);
	for (int i = 0; i < 100000; i++)
		w[i] = (char)i;
	add(a, "manifest.json", REG, MAN, strlen(MAN));
	add(a, "adapter_model.safetensors", REG, w, 100000);
	finish(a);
	size_t full = used;
	used = 60000;
	expect_refused("runcated", NULL);  /* libarchive says "Truncated tar archive" */
	used = full;
	struct lora_pkg p;
	struct lora_err err = { 0 };
	CHECK(lora_pkg_read_mem(buf, used, "ok", NULL, &p, &err) == 0);
	lora_pkg_free(&p);
	memcpy(buf, "not a tar archive, not at all", 29);
	memset(buf + 29, 'z', 1024);
	used = 1053;
	expect_refused("not a tar archive", NULL);
	free(w);
}

TEST(writer_round_trip)
{
	char dir[] = "/tmp/lora-t-wr.XXXXXX", path[128], ex[140];
	struct lora_pkg_entry f[2] = { 0 };
	struct lora_pkg p;
	struct lora_err err = { 0 };
	const char *man = "{\"m\": 1}\n", *sig = "-----BEGIN SSH SIGNATURE-----\n";

	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/w.bin", dir);
	lora_write_file_atomic(path, "0123456789", 10, 0644, &err);
	strcpy(f[0].name, "adapter_model.safetensors");
	f[0].size = 10;
	f[0].path = path;
	strcpy(f[1].name, "README.md");
	f[1].size = 10;
	f[1].path = path;
	snprintf(ex, sizeof(ex), "%s/p.lora", dir);
	int fd = open(ex, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(lora_pkg_write_fd(fd, ex, man, strlen(man), sig, strlen(sig), f, 2, 1738555506, &err) == 0);
	close(fd);
	snprintf(ex, sizeof(ex), "%s/x", dir);
	mkdir(ex, 0755);
	snprintf(path, sizeof(path), "%s/p.lora", dir);
	CHECKF(lora_pkg_read(path, ex, &p, &err) == 0, "%s", err.msg);
	CHECK(p.manifest_len == strlen(man) && !memcmp(p.manifest, man, p.manifest_len));
	CHECK(p.sig_len == strlen(sig) && !memcmp(p.sig, sig, p.sig_len));
	CHECK(p.n_entries == 2 && !strcmp(p.entries[1].name, "README.md") && p.entries[0].size == 10);
	char hex[65];
	lora_sha256_hex("0123456789", 10, hex);
	CHECK(!strcmp(p.entries[0].sha256, hex));
	char *back = NULL;
	size_t n;
	CHECK(p.entries[1].path && lora_read_file(p.entries[1].path, 100, &back, &n, &err) == 0 && n == 10 &&
	      !memcmp(back, "0123456789", 10));
	free(back);
	/* the manifest/file-set match */
	struct lora_manifest m;
	char mj[600];
	snprintf(mj, sizeof(mj),
		 "{\"lora_package\":1,\"name\":\"n\",\"created\":\"x\",\"files\":["
		 "{\"name\":\"adapter_config.json\",\"size\":10,\"sha256\":\"%s\"},"
		 "{\"name\":\"adapter_model.safetensors\",\"size\":10,\"sha256\":\"%s\"}]}", hex, hex);
	CHECKF(lora_manifest_parse(mj, strlen(mj), &m, &err) == 0, "%s", err.msg);
	CHECK(lora_pkg_match_files(&m, p.entries, 2, &err) < 0 && strstr(err.msg, "'README.md'") &&
	      strstr(err.msg, "does not list"));
	strcpy(p.entries[1].name, "adapter_config.json");
	CHECK(lora_pkg_match_files(&m, p.entries, 2, &err) == 0);
	CHECK(lora_pkg_match_files(&m, p.entries, 1, &err) < 0 && strstr(err.msg, "lacks"));
	p.entries[0].sha256[3] ^= 1;
	CHECK(lora_pkg_match_files(&m, p.entries, 2, &err) < 0 && strstr(err.msg, "sha256 of 'adapter_model"));
	p.entries[0].sha256[3] ^= 1;
	p.entries[0].size = 11;
	CHECK(lora_pkg_match_files(&m, p.entries, 2, &err) < 0 && strstr(err.msg, "11 bytes"));
	lora_manifest_free(&m);
	lora_pkg_free(&p);
	lora_rm_rf(dir, NULL);
}

int main(void)
{
	buf = malloc(CAP);
	RUN(hostile_entries);
	RUN(manifest_must_come_first);
	RUN(limits);
	RUN(declared_100_gb);
	RUN(truncated_and_garbage);
	RUN(writer_round_trip);
	free(buf);
	return t_done();
}
