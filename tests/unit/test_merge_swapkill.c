/*
 * test_merge_swapkill.c - `lora swap` killed with SIGKILL at random moments:
 * after lora_merged_recover() the folder holds exactly the old set or exactly
 * the new one (checksums of every file, compared with fresh merges).
 *
 * The swap runs with LORA_TEST_SWAP_PAUSE_US so that it spends a few
 * milliseconds after each write step; kill times are drawn at random within
 * evenly spaced slots of one undisturbed swap's duration, so the kills land
 * everywhere: before the journal, while it is written, after its commit, in
 * the middle of applying it, and after.  Needs $LORA (tests/run.sh sets it).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/safetensors.h"
#include "libadapter/merge/swap.h"
#include "tests/t.h"

extern char **environ;

#define TRIALS 24
#define PAUSE_US "3000"

static char tmp[256];
static const char *lora;
/* The fixtures every test uses: a bf16 base and two adapters for it. */
static char *base, *ad_a, *ad_b;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static char errlog[300];   /* the spawned commands' stderr */

/* Run argv[0] with stdout sent to /dev/null and stderr to errlog (shown when it fails). */
static pid_t spawn(char *const argv[])
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int rc;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 2, errlog, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	return rc ? -1 : pid;
}

static int run_wait(char *const argv[])
{
	int st, rc;
	pid_t pid = spawn(argv);
	if (pid < 0 || waitpid(pid, &st, 0) < 0)
		return -1;
	rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	if (rc != 0) {
		char *text = NULL;
		size_t len;
		if (lora_read_file(errlog, 1 << 16, &text, &len, NULL) == 0)
			fprintf(stderr, "  %s %s: exit %d: %s", argv[0], argv[1], rc, text);
		free(text);
	}
	return rc;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "name sha256\n" for every entry of dir, sorted: the folder's checksum list. */
static char *signature(const char *dir)
{
	struct lora_buf b = LORA_BUF_INIT;
	char *names[64];
	size_t n = 0;
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return NULL;
	while ((e = readdir(d)) && n < 64)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			names[n++] = strdup(e->d_name);
	closedir(d);
	qsort(names, n, sizeof(char *), name_cmp);
	for (size_t i = 0; i < n; i++) {
		char *p = lora_path_join(dir, names[i]), hex[65] = "";
		lora_sha256_file(p, hex, NULL, NULL);
		lora_buf_printf(&b, "%s %s\n", names[i], hex);
		free(p);
		free(names[i]);
	}
	return lora_buf_take(&b);
}

static int has_journal(const char *dir)
{
	char *p = lora_path_join(dir, LORA_SWAP_JOURNAL);
	int r = lora_is_file(p);
	free(p);
	return r;
}

/* The entry table's length, from the head of the journal open on fd. */
static uint64_t table_len(int fd)
{
	unsigned char head[64];
	uint64_t tl = 0;

	if (pread(fd, head, 64, 0) != 64)
		return 0;
	for (int k = 7; k >= 0; k--)
		tl = tl << 8 | head[16 + k];
	return tl;
}

static int copy_dir(const char *from, const char *to)
{
	char *argv[] = { "/bin/cp", "-a", (char *)from, (char *)to, NULL };
	return run_wait(argv);
}

/*
 * TRIALS kills of `lora swap W AD` at random moments, W a copy of `from`
 * (alternating: fa with ad_b, fb with ad_a); after recovery W must hold
 * sig_old or sig_new of its direction.  `full` is one undisturbed swap's time.
 */
static void kill_trials(const char *label, const char *fa, const char *fb, const char *ad_a,
			const char *ad_b, const char *sig_a, const char *sig_b, const char *sig_ab,
			const char *sig_ba, double full)
{
	char w[300];
	int n_old = 0, n_new = 0, n_mid = 0, n_bad = 0;

	snprintf(w, sizeof(w), "%s/w", tmp);
	setenv("LORA_TEST_SWAP_PAUSE_US", PAUSE_US, 1);
	for (int i = 0; i < TRIALS; i++) {
		/* Alternate directions: A -> B and B -> A. */
		const char *from = i % 2 ? fb : fa, *to_ad = i % 2 ? ad_a : ad_b;
		const char *sig_old = i % 2 ? sig_b : sig_a, *sig_new = i % 2 ? sig_ba : sig_ab;
		char *sw[] = { (char *)lora, "swap", w, (char *)to_ad, NULL };
		double at = full * (i + (double)rand() / RAND_MAX) / TRIALS;
		struct lora_err err = { 0 };
		pid_t pid;
		char *s;
		int st;

		CHECK(copy_dir(from, w) == 0);
		pid = spawn(sw);
		CHECK(pid > 0);
		usleep((useconds_t)(at * 1e6));
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		n_mid += has_journal(w);
		CHECKF(lora_merged_recover(w, &err) == 0, "%s", err.msg);
		s = signature(w);
		if (s && !strcmp(s, sig_old))
			n_old++;
		else if (s && !strcmp(s, sig_new))
			n_new++;
		else {
			n_bad++;
			fprintf(stderr, "  trial %d (kill at %.1f ms): folder holds neither set:\n%s", i,
				at * 1e3, s ? s : "(unreadable)\n");
		}
		free(s);
		lora_rm_rf(w, NULL);
	}
	unsetenv("LORA_TEST_SWAP_PAUSE_US");
	printf("  %s: %d kills over %.0f ms: %d left the old set, %d the new one (%d of them "
	       "mid-journal), %d a mix\n", label, TRIALS, full * 1e3, n_old, n_new, n_mid, n_bad);
	CHECK(n_bad == 0);
	CHECK(n_old + n_new == TRIALS);
	/* The kills must have covered both outcomes and the replay path. */
	CHECK(n_old > 0 && n_new > 0 && n_mid > 0);
}

/* One undisturbed swap of a copy of `from` to `ad`: its time, and the folder's signature. */
static char *swap_once(const char *from, const char *ad, double *secs)
{
	char w[300], *s;
	char *sw[] = { (char *)lora, "swap", w, (char *)ad, NULL };
	double t0;

	snprintf(w, sizeof(w), "%s/w1", tmp);
	setenv("LORA_TEST_SWAP_PAUSE_US", PAUSE_US, 1);
	if (copy_dir(from, w) != 0)
		return NULL;
	t0 = now();
	if (run_wait(sw) != 0)
		return NULL;
	*secs = now() - t0;
	unsetenv("LORA_TEST_SWAP_PAUSE_US");
	s = signature(w);
	lora_rm_rf(w, NULL);
	return s;
}

/* Exact swaps (the base is at hand): the journal holds the plan, tensors are recomputed. */
TEST(swap_killed_at_random_moments)
{
	char fa[300], fb[300];
	char *sig_a, *sig_b, *sig_ab;
	double full = 0;

	snprintf(fa, sizeof(fa), "%s/fa", tmp);
	snprintf(fb, sizeof(fb), "%s/fb", tmp);
	{
		char *m1[] = { (char *)lora, "merge", "--base", base, ad_a, "-o", fa, NULL };
		char *m2[] = { (char *)lora, "merge", "--base", base, ad_b, "-o", fb, NULL };
		CHECK(run_wait(m1) == 0);
		CHECK(run_wait(m2) == 0);
	}
	sig_a = signature(fa);
	sig_b = signature(fb);
	CHECK(sig_a && sig_b && strcmp(sig_a, sig_b));
	/* An undisturbed swap A -> B gives exactly a fresh merge of B. */
	sig_ab = swap_once(fa, ad_b, &full);
	CHECK(sig_ab && !strcmp(sig_ab, sig_b));
	srand(12345);
	kill_trials("exact", fa, fb, ad_a, ad_b, sig_a, sig_b, sig_b, sig_a, full);
	lora_rm_rf(fa, NULL);
	lora_rm_rf(fb, NULL);
	free(sig_a);
	free(sig_b);
	free(sig_ab);
}

/* Drift swaps (the base is gone): the journal holds the new tensor bytes. */
TEST(drift_swap_killed_at_random_moments)
{
	char bc[300], fa[300], fb[300];
	char *sig_a, *sig_b, *sig_ab, *sig_ba;
	double full = 0, t2 = 0;

	snprintf(bc, sizeof(bc), "%s/base", tmp);
	snprintf(fa, sizeof(fa), "%s/da", tmp);
	snprintf(fb, sizeof(fb), "%s/db", tmp);
	CHECK(copy_dir(base, bc) == 0);
	{
		char *m1[] = { (char *)lora, "merge", "--base", bc, ad_a, "-o", fa, NULL };
		char *m2[] = { (char *)lora, "merge", "--base", bc, ad_b, "-o", fb, NULL };
		CHECK(run_wait(m1) == 0);
		CHECK(run_wait(m2) == 0);
	}
	lora_rm_rf(bc, NULL);   /* the recorded base is gone: swaps drift */
	sig_a = signature(fa);
	sig_b = signature(fb);
	sig_ab = swap_once(fa, ad_b, &full);
	sig_ba = swap_once(fb, ad_a, &t2);
	/* Drift changes the weights by rounding, and the record says so: neither equals a fresh merge. */
	CHECK(sig_ab && sig_ba && strcmp(sig_ab, sig_b) && strcmp(sig_ba, sig_a));
	srand(54321);
	kill_trials("drift", fa, fb, ad_a, ad_b, sig_a, sig_b, sig_ab, sig_ba, full > t2 ? full : t2);
	lora_rm_rf(fa, NULL);
	lora_rm_rf(fb, NULL);
	free(sig_a);
	free(sig_b);
	free(sig_ab);
	free(sig_ba);
}

/*
 * Kill an exact swap of a copy of the base's merge right after its commit
 * (the journal stays, some tensors may be written): returns 0 when the
 * journal is there.  m: the merged folder; b: its base.
 */
static int committed_swap(const char *b, const char *m, const char *ad_a, const char *ad_b)
{
	char *m1[] = { (char *)lora, "merge", "--base", (char *)b, (char *)ad_a, "-o", (char *)m, NULL };
	char *sw[] = { (char *)lora, "swap", (char *)m, (char *)ad_b, NULL };
	pid_t pid;
	int st;

	if (run_wait(m1) != 0)
		return -1;
	setenv("LORA_TEST_SWAP_PAUSE_US", "200000", 1);
	pid = spawn(sw);
	for (int k = 0; k < 400 && !has_journal(m); k++)
		usleep(10000);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	unsetenv("LORA_TEST_SWAP_PAUSE_US");
	return has_journal(m) ? 0 : -1;
}

/* A committed exact swap in tmp/NAME (see committed_swap); its journal opened for writing. */
static int committed_journal(const char *name, char m[300], char jn[400])
{
	snprintf(m, 300, "%s/%s", tmp, name);
	if (committed_swap(base, m, ad_a, ad_b) < 0)
		return -1;
	snprintf(jn, 400, "%s/%s", m, LORA_SWAP_JOURNAL);
	return open(jn, O_RDWR);
}

/* An exact swap's recovery needs its base: refused while it is gone or changed, done once it is back. */
TEST(recover_needs_the_base_of_an_exact_swap)
{
	char bc[300], bgone[300], m[300], fresh[300], shard[400];
	struct lora_err err = { 0 };
	char *sig_fresh, *s;

	snprintf(bc, sizeof(bc), "%s/rb", tmp);
	snprintf(bgone, sizeof(bgone), "%s/rb.away", tmp);
	snprintf(m, sizeof(m), "%s/rm", tmp);
	snprintf(fresh, sizeof(fresh), "%s/rfresh", tmp);
	CHECK(copy_dir(base, bc) == 0);
	{
		char *m2[] = { (char *)lora, "merge", "--base", bc, ad_b, "-o", fresh, NULL };
		CHECK(run_wait(m2) == 0);
	}
	sig_fresh = signature(fresh);
	CHECK(committed_swap(bc, m, ad_a, ad_b) == 0);
	/* Base gone: refused, the journal stays. */
	CHECK(rename(bc, bgone) == 0);
	CHECK(lora_merged_recover(m, &err) < 0);
	CHECKF(strstr(err.msg, "put the base back") != NULL, "%s", err.msg);
	CHECK(has_journal(m));
	/* Base changed (one byte of a tensor the swap rewrites): refused, the journal stays. */
	CHECK(rename(bgone, bc) == 0);
	snprintf(shard, sizeof(shard), "%s/model-00001-of-00002.safetensors", bc);
	{
		struct lora_st *st;
		const struct lora_st_tensor *t;
		int fd;
		unsigned char c;
		CHECK(lora_st_open(shard, &st, &err) == 0);
		t = lora_st_find(st, "model.layers.0.self_attn.q_proj.weight");
		CHECK(t != NULL);
		fd = open(shard, O_RDWR);
		CHECK(fd >= 0 && pread(fd, &c, 1, (off_t)t->file_offset + 3) == 1);
		c ^= 0x01;
		CHECK(pwrite(fd, &c, 1, (off_t)t->file_offset + 3) == 1);
		CHECK(lora_merged_recover(m, &err) < 0);
		CHECKF(strstr(err.msg, "has changed since the swap began") != NULL, "%s", err.msg);
		CHECK(has_journal(m));
		/* Put the byte back: recovery finishes the swap, bit-identical to a fresh merge. */
		c ^= 0x01;
		CHECK(pwrite(fd, &c, 1, (off_t)t->file_offset + 3) == 1);
		close(fd);
		lora_st_close(st);
	}
	CHECKF(lora_merged_recover(m, &err) == 0, "%s", err.msg);
	CHECK(!has_journal(m));
	s = signature(m);
	CHECK(s && sig_fresh && !strcmp(s, sig_fresh));
	free(s);
	free(sig_fresh);
}

/* One changed byte in the plan of a committed journal: refused as damaged, nothing written. */
TEST(recover_refuses_a_damaged_plan)
{
	char m[300], jn[400];
	struct lora_err err = { 0 };
	unsigned char c;
	int fd;
	char *before, *after;

	/* The plan blob starts right after the entry table: byte 64 + table + 40 is inside it. */
	fd = committed_journal("dp", m, jn);
	CHECK(fd >= 0);
	{
		uint64_t tl = table_len(fd);
		CHECK(tl > 0 && pread(fd, &c, 1, (off_t)(64 + tl + 40)) == 1);
		c ^= 0x20;
		CHECK(pwrite(fd, &c, 1, (off_t)(64 + tl + 40)) == 1);
	}
	close(fd);
	before = signature(m);
	CHECK(lora_merged_recover(m, &err) < 0);
	CHECKF(strstr(err.msg, "is damaged") != NULL, "%s", err.msg);
	after = signature(m);
	CHECK(before && after && !strcmp(before, after));
	free(before);
	free(after);
}

/*
 * An entry whose data would start past the end of the journal (its table
 * checksum made right, as a hostile file would): refused as damaged before
 * anything is read or allocated for it.
 */
TEST(recover_refuses_an_entry_past_the_end)
{
	char m[300], jn[400];
	struct lora_err err = { 0 };
	unsigned char head[64], *tab;
	uint64_t tl = 0;
	unsigned int len = 0;
	int fd;

	fd = committed_journal("pe", m, jn);
	CHECK(fd >= 0 && (tl = table_len(fd)) > 0 && pread(fd, head, 64, 0) == 64);
	tab = malloc(tl);
	CHECK(tab && pread(fd, tab, tl, 64) == (ssize_t)tl);
	/* First entry (the plan): src_off = 2^62, len = 2^62 + 5. */
	for (int k = 0; k < 8; k++) {
		tab[24 + k] = k == 7 ? 0x40 : 0;
		tab[16 + k] = k == 7 ? 0x40 : k == 0 ? 5 : 0;
	}
	EVP_Digest(tab, tl, head + 32, &len, EVP_sha256(), NULL);
	CHECK(pwrite(fd, tab, tl, 64) == (ssize_t)tl && pwrite(fd, head, 64, 0) == 64);
	close(fd);
	CHECK(lora_merged_recover(m, &err) < 0);
	CHECKF(strstr(err.msg, "is damaged") != NULL, "%s", err.msg);
	CHECK(has_journal(m));
	free(tab);
}

/* A committed journal whose target was truncated is refused, not half-applied. */
TEST(recover_refuses_a_journal_for_other_files)
{
	char m[300], jn[400], shard[400];
	struct lora_err err = { 0 };

	snprintf(m, sizeof(m), "%s/j", tmp);
	{
		char *m1[] = { (char *)lora, "merge", "--base", base, ad_a, "-o", m, NULL };
		CHECK(run_wait(m1) == 0);
	}
	/* Kill a slow swap right after the commit: the journal stays. */
	setenv("LORA_TEST_SWAP_PAUSE_US", "200000", 1);
	{
		char *sw[] = { (char *)lora, "swap", m, ad_b, NULL };
		pid_t pid = spawn(sw);
		int st;
		for (int k = 0; k < 400 && !has_journal(m); k++)
			usleep(10000);
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
	}
	unsetenv("LORA_TEST_SWAP_PAUSE_US");
	CHECK(has_journal(m));
	snprintf(shard, sizeof(shard), "%s/model-00002-of-00002.safetensors", m);
	CHECK(truncate(shard, 100) == 0);
	CHECK(lora_merged_recover(m, &err) < 0);
	CHECKF(strstr(err.msg, "is not the file the journal was written for") != NULL, "%s", err.msg);
	CHECK(has_journal(m));
	/* A damaged journal is refused too. */
	snprintf(jn, sizeof(jn), "%s/%s", m, LORA_SWAP_JOURNAL);
	CHECK(truncate(jn, 200) == 0);
	CHECK(lora_merged_recover(m, &err) < 0);
	CHECKF(strstr(err.msg, "is damaged") != NULL, "%s", err.msg);
}

int main(void)
{
	lora = getenv("LORA");
	if (!lora || access(lora, X_OK) != 0) {
		fprintf(stderr, "test_merge_swapkill: $LORA must name the lora binary\n");
		printf("FAIL swap_killed_at_random_moments\n");
		return 1;
	}
	snprintf(tmp, sizeof(tmp), "%s/lora-test-swapkill.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(errlog, sizeof(errlog), "%s/stderr.log", tmp);
	base = t_fixture("merge/base_bf16");
	ad_a = t_fixture("merge/ad_plain");
	ad_b = t_fixture("merge/ad_pattern");
	{
		/* Keep the fingerprint cache inside the test folder. */
		char c[300];
		snprintf(c, sizeof(c), "%s/cache", tmp);
		setenv("XDG_CACHE_HOME", c, 1);
	}
	RUN(swap_killed_at_random_moments);
	RUN(drift_swap_killed_at_random_moments);
	RUN(recover_needs_the_base_of_an_exact_swap);
	RUN(recover_refuses_a_damaged_plan);
	RUN(recover_refuses_an_entry_past_the_end);
	RUN(recover_refuses_a_journal_for_other_files);
	lora_rm_rf(tmp, NULL);
	free(base);
	free(ad_a);
	free(ad_b);
	return t_done();
}
