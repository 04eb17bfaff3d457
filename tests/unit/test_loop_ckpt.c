/*
 * test_loop_ckpt.c - the work area of a training run and its checkpoint
 * file (train/ckpt.h): paths, locking, removal, and the file format.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/safetensors.h"
#include "tests/t.h"
#include "train/ckpt.h"

static char tmp[256];

static char *path2(const char *a, const char *b)
{
	char *p = malloc(strlen(a) + strlen(b) + 2);
	sprintf(p, "%s/%s", a, b);
	return p;
}

TEST(work_dir_is_under_the_store_by_name_and_tag)
{
	struct lora_err err = { 0 };
	char *d = lora_work_dir("/s", "sql:v1", &err);

	CHECK(d && !strcmp(d, "/s/work/sql/v1"));
	free(d);
	d = lora_work_dir("/s", "sql", &err);
	CHECK(d && !strcmp(d, "/s/work/sql/latest"));
	free(d);
	CHECK(lora_work_dir("/s", "sha256:0123456789abcdef", &err) == NULL);
	CHECK(err.code == LORA_EUSAGE);
	/* names that would leave the work area are not names */
	CHECK(lora_work_dir("/s", "../etc", &err) == NULL);
	CHECK(lora_work_dir("/s", "a/b", &err) == NULL);
	CHECK(lora_work_dir("/s", "a:..", &err) == NULL);
	CHECK(lora_work_dir("/s", ".hidden", &err) == NULL);
}

TEST(checkpoint_round_trip)
{
	struct lora_err err = { 0 };
	float p[5] = { 1, -2, 3.5f, 1e-30f, 7 }, m[5] = { 0.1f, 0.2f, 0.3f, 0.4f, 0.5f }, v[5] = { 9, 8, 7, 6, 5 };
	char *f = path2(tmp, "ck.safetensors");
	struct lora_ckpt c;
	struct lora_st *st = NULL;

	CHECKF(lora_ckpt_write(f, "{\"step\": 3}", p, m, v, 5, &err) == 0, "%s", err.msg);
	CHECKF(lora_ckpt_read(f, &c, &err) == 0, "%s", err.msg);
	CHECK(c.n == 5 && c.state && !strcmp(c.state, "{\"step\": 3}"));
	CHECK(c.params && !memcmp(c.params, p, sizeof(p)));
	CHECK(c.m && !memcmp(c.m, m, sizeof(m)));
	CHECK(c.v && !memcmp(c.v, v, sizeof(v)));
	lora_ckpt_free(&c);
	/* it is a plain safetensors file any reader can open */
	CHECKF(lora_st_open(f, &st, &err) == 0, "%s", err.msg);
	CHECK(st && lora_st_meta(st, "format") && !strcmp(lora_st_meta(st, "format"), "lora-checkpoint"));
	CHECK(st && lora_st_find(st, "adam.v") && lora_st_find(st, "adam.v")->nelem == 5);
	lora_st_close(st);
	free(f);
}

TEST(checkpoint_write_leaves_no_temporary_files)
{
	struct lora_err err = { 0 };
	float x[2] = { 1, 2 };
	char *d = path2(tmp, "clean"), *f = path2(d, "checkpoint.safetensors");
	DIR *dir;
	struct dirent *e;
	int n = 0;

	CHECK(lora_mkdir_p(d, 0755, &err) == 0);
	for (int i = 0; i < 3; i++)
		CHECK(lora_ckpt_write(f, "{}", x, x, x, 2, &err) == 0);
	dir = opendir(d);
	while (dir && (e = readdir(dir)))
		if (e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")))
			n++;
	if (dir)
		closedir(dir);
	CHECK(n == 1);
	free(f);
	free(d);
}

TEST(checkpoint_read_refuses_other_files)
{
	struct lora_err err = { 0 };
	struct lora_ckpt c;
	char *f = path2(tmp, "other.safetensors");
	struct lora_st_spec s[1] = { { "params", LORA_DT_F32, 1, { 2 } } };
	struct lora_st_writer w;
	float x[2] = { 1, 2 };
	const char *k[1] = { "format" }, *v[1] = { "pt" };

	/* a safetensors file that is not a checkpoint */
	CHECK(lora_st_writer_open(&w, f, s, 1, k, v, 1, &err) == 0);
	CHECK(lora_st_writer_write(&w, x, sizeof(x), &err) == 0 && lora_st_writer_commit(&w, &err) == 0);
	CHECK(lora_ckpt_read(f, &c, &err) < 0);
	CHECKF(strstr(err.msg, "not a lora checkpoint") != NULL, "%s", err.msg);
	/* a truncated checkpoint */
	CHECK(lora_ckpt_write(f, "{}", x, x, x, 2, &err) == 0);
	CHECK(truncate(f, 60) == 0);
	CHECK(lora_ckpt_read(f, &c, &err) < 0);
	CHECKF(strstr(err.msg, "checkpoint") != NULL, "%s", err.msg);
	/* a missing one */
	CHECK(lora_ckpt_read("/nonexistent/ck", &c, &err) < 0);
	CHECK(c.params == NULL && c.state == NULL);
	free(f);
}

TEST(lock_is_exclusive_and_remove_respects_it)
{
	struct lora_err err = { 0 };
	char *store = path2(tmp, "store"), *wd = lora_work_dir(store, "job:t1", &err);
	int fd, fd2;

	fd = lora_work_lock(wd, &err);
	CHECKF(fd >= 0, "%s", err.msg);
	fd2 = lora_work_lock(wd, &err);
	CHECK(fd2 < 0);
	CHECKF(strstr(err.msg, "another lora train") != NULL, "%s", err.msg);
	CHECK(lora_work_remove(store, "job:t1", &err) < 0);
	CHECKF(strstr(err.msg, "in progress") != NULL, "%s", err.msg);
	CHECK(lora_is_dir(wd));
	close(fd);
	CHECK(lora_work_remove(store, "job:t1", &err) == 1);
	CHECK(!lora_is_dir(wd));
	/* the NAME level goes too when empty; other names stay */
	{
		char *p = path2(store, "work/job");
		CHECK(!lora_is_dir(p));
		free(p);
	}
	CHECK(lora_work_remove(store, "job:t1", &err) == 0);
	CHECK(lora_work_remove(store, "never", &err) == 0);
	CHECK(lora_work_remove(store, "sha256:0123456789abcdef", &err) < 0);
	free(wd);
	free(store);
}

int main(void)
{
	const char *t = getenv("TMPDIR");

	snprintf(tmp, sizeof(tmp), "%s/lora-loop-ckpt.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmp)) {
		printf("FAIL loop_ckpt_tmpdir\n");
		return 1;
	}
	RUN(work_dir_is_under_the_store_by_name_and_tag);
	RUN(checkpoint_round_trip);
	RUN(checkpoint_write_leaves_no_temporary_files);
	RUN(checkpoint_read_refuses_other_files);
	RUN(lock_is_exclusive_and_remove_respects_it);
	lora_rm_rf(tmp, NULL);
	return t_done();
}
