/*
 * test_store_crypto.c - OpenSSH keys, SSHSIG and allowed_signers against what
 * ssh-keygen made and decided (tests/oracle/store_keys.py wrote the fixtures).
 */
#include "tests/t.h"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/store/sshkey.h"
#include "libadapter/store/sshsig.h"

static char *slurp(const char *rel, size_t *len)
{
	char *p = t_fixture(rel), *out = NULL;
	struct lora_err err = { 0 };

	if (lora_read_file(p, 1 << 20, &out, len, &err) < 0)
		fprintf(stderr, "  %s\n", err.msg);
	free(p);
	return out;
}

TEST(base64_rfc4648_vectors)
{
	static const char *const in[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const out[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
	for (int i = 0; i < 7; i++) {
		char *e = lora_b64_encode(in[i], strlen(in[i]), 0, 1);
		unsigned char *d;
		size_t n;
		CHECKF(e && !strcmp(e, out[i]), "encode '%s' gave '%s'", in[i], e);
		CHECK(lora_b64_decode(out[i], strlen(out[i]), &d, &n) == 0 && n == strlen(in[i]) &&
		      !memcmp(d, in[i], n));
		free(e);
		free(d);
	}
	/* unpadded (fingerprints) and wrapped (armor) */
	char *e = lora_b64_encode("foob", 4, 0, 0);
	CHECK(e && !strcmp(e, "Zm9vYg"));
	free(e);
	e = lora_b64_encode("foobar", 6, 4, 1);
	CHECK(e && !strcmp(e, "Zm9v\nYmFy"));
	free(e);
	/* refused: bad characters, data after padding, non-canonical last bits, a lone sextet */
	static const char *const bad[] = { "Zm9v!", "Zg==Zg==", "Zh==", "Z", "Zm9vY", "Zg===" };
	for (int i = 0; i < 6; i++) {
		unsigned char *d = NULL;
		size_t n;
		CHECKF(lora_b64_decode(bad[i], strlen(bad[i]), &d, &n) < 0, "accepted '%s'", bad[i]);
	}
}

TEST(private_key_from_ssh_keygen)
{
	struct lora_sshkey k;
	struct lora_err err = { 0 };
	unsigned char pk[32];
	char *pub, *fp_want, fp[LORA_SSH_FP_MAX], *comment = NULL, *path = t_fixture("store/keys/ed25519");
	size_t n;

	CHECKF(lora_sshkey_load_private(path, &k, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(k.comment, "alice@example.com"));
	pub = slurp("store/keys/ed25519.pub", &n);
	CHECK(pub && lora_sshkey_parse_pub_line(pub, pk, &comment, &err) == 0);
	CHECK(!memcmp(pk, k.pk, 32));
	CHECK(comment && !strcmp(comment, "alice@example.com"));
	fp_want = slurp("store/keys/ed25519.fp", &n);
	lora_sshkey_fingerprint(k.pk, fp);
	CHECKF(fp_want && !strncmp(fp_want, fp, strlen(fp)) && fp_want[strlen(fp)] == '\n', "%s vs %s", fp, fp_want);
	/* the public line we write is the one ssh-keygen wrote */
	char *line = lora_sshkey_pub_line(k.pk, k.comment);
	CHECK(line && !strncmp(pub, line, strlen(line)));
	/* and a key we format reads back the same */
	char *text = lora_sshkey_format_private(&k);
	struct lora_sshkey k2;
	CHECK(text && lora_sshkey_parse_private(text, strlen(text), "x", &k2, &err) == 0);
	CHECK(!memcmp(&k, &k2, sizeof(k)));
	CHECK(text && strstr(text, "-----BEGIN OPENSSH PRIVATE KEY-----\n") == text);
	lora_sshkey_wipe(&k);
	lora_sshkey_wipe(&k2);
	for (size_t i = 0; i < sizeof(k.seed); i++)
		CHECK(k.seed[i] == 0);
	free(text);
	free(line);
	free(pub);
	free(fp_want);
	free(comment);
	free(path);
}

TEST(keys_refused_clearly)
{
	struct lora_sshkey k;
	struct lora_err err = { 0 };
	char *p = t_fixture("store/keys/encrypted");

	CHECK(lora_sshkey_load_private(p, &k, &err) < 0);
	CHECKF(strstr(err.msg, "encrypted with a passphrase") != NULL, "%s", err.msg);
	free(p);
	p = t_fixture("store/keys/rsa");
	CHECK(lora_sshkey_load_private(p, &k, &err) < 0);
	CHECKF(strstr(err.msg, "ssh-rsa") != NULL, "%s", err.msg);
	free(p);
	p = t_fixture("store/keys/rsa.pub");
	size_t n;
	char *rsapub = slurp("store/keys/rsa.pub", &n);
	unsigned char pk[32];
	CHECK(lora_sshkey_parse_pub_line(rsapub, pk, NULL, &err) < 0 && strstr(err.msg, "ssh-rsa"));
	free(rsapub);
	free(p);
	CHECK(lora_sshkey_parse_private("hello", 5, "x", &k, &err) < 0);
	CHECK(lora_sshkey_parse_pub_line("ssh-ed25519 AAAA", pk, NULL, &err) < 0);
	CHECK(lora_sshkey_parse_pub_line("", pk, NULL, &err) < 0);
	/* a public key line with leading blanks, no comment, CRLF */
	char *pub = slurp("store/keys/ed25519.pub", &n), line[256];
	char *sp = strchr(pub, ' '), *sp2 = sp ? strchr(sp + 1, ' ') : NULL;
	snprintf(line, sizeof(line), "  %.*s\r\n", (int)(sp2 - pub), pub);
	char *c = (char *)1;
	CHECK(lora_sshkey_parse_pub_line(line, pk, &c, &err) == 0 && c == NULL);
	free(pub);
}

TEST(generated_key_is_consistent)
{
	struct lora_sshkey k, k2;
	struct lora_err err = { 0 };
	unsigned char sig[64];

	CHECK(lora_sshkey_generate(&k, "gen@example.com", &err) == 0);
	CHECK(lora_sshkey_generate(&k2, "gen@example.com", &err) == 0);
	CHECK(memcmp(k.seed, k2.seed, 32) != 0);
	CHECK(lora_ed25519_sign(&k, "abc", 3, sig, &err) == 0);
	CHECK(lora_ed25519_verify(k.pk, "abc", 3, sig) == 1);
	CHECK(lora_ed25519_verify(k2.pk, "abc", 3, sig) == 0);
	CHECK(lora_ed25519_verify(k.pk, "abd", 3, sig) == 0);
	lora_sshkey_wipe(&k);
	lora_sshkey_wipe(&k2);
}

TEST(key_file_written_exclusively)
{
	struct lora_sshkey k, back;
	struct lora_err err = { 0 };
	char dir[] = "/tmp/lora-t-key.XXXXXX", path[64];
	struct stat st;

	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/id", dir);
	CHECK(lora_sshkey_generate(&k, "w@example.com", &err) == 0);
	CHECK(lora_sshkey_write_private(path, &k, 0, &err) == 0);
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	CHECK(lora_sshkey_write_private(path, &k, 0, &err) < 0 && strstr(err.msg, "already exists"));
	CHECK(lora_sshkey_load_private(path, &back, &err) == 0 && !memcmp(back.seed, k.seed, 32));
	CHECK(lora_sshkey_write_private(path, &k, 1, &err) == 0);
	CHECK(lora_rm_rf(dir, &err) == 0);
	lora_sshkey_wipe(&k);
	lora_sshkey_wipe(&back);
}

TEST(sshsig_interop)
{
	struct lora_sshkey k;
	struct lora_err err = { 0 };
	size_t ml, sl, s2l, s3l;
	char *msg = slurp("store/keys/message", &ml), *sig = slurp("store/keys/message.sig", &sl);
	char *sig256 = slurp("store/keys/message.sha256.sig", &s2l);
	char *sigfile = slurp("store/keys/message.other-ns.sig", &s3l), *p = t_fixture("store/keys/ed25519");
	char *mine = NULL;
	unsigned char pk[32];

	CHECK(msg && sig && sig256 && sigfile);
	CHECK(lora_sshkey_load_private(p, &k, &err) == 0);
	/* Ed25519 is deterministic: our signature is the one ssh-keygen made, byte for byte */
	CHECK(lora_sshsig_sign(&k, LORA_SIG_NAMESPACE, msg, ml, &mine, &err) == 0);
	CHECKF(mine && strlen(mine) == sl && !memcmp(mine, sig, sl), "ours:\n%s\ntheirs:\n%s", mine, sig);
	CHECKF(lora_sshsig_verify(sig, sl, LORA_SIG_NAMESPACE, msg, ml, pk, &err) == 0, "%s", err.msg);
	CHECK(!memcmp(pk, k.pk, 32));
	CHECKF(lora_sshsig_verify(sig256, s2l, LORA_SIG_NAMESPACE, msg, ml, pk, &err) == 0, "%s", err.msg);
	/* another namespace, another message, a changed signature: refused as verification failures */
	CHECK(lora_sshsig_verify(sigfile, s3l, LORA_SIG_NAMESPACE, msg, ml, pk, &err) < 0 &&
	      err.code == LORA_EVERIFY && strstr(err.msg, "namespace 'file'"));
	CHECK(lora_sshsig_verify(sigfile, s3l, "file", msg, ml, pk, &err) == 0);
	msg[5] ^= 1;
	CHECK(lora_sshsig_verify(sig, sl, LORA_SIG_NAMESPACE, msg, ml, pk, &err) < 0 && err.code == LORA_EVERIFY &&
	      strstr(err.msg, "bad signature"));
	msg[5] ^= 1;
	/* flip one bit in every base64 character of the body in turn: never accepted */
	const char *body = strchr(sig, '\n') + 1, *end = strstr(sig, "-----END");
	int accepted = 0;
	for (const char *c = body; c < end; c++) {
		size_t off = (size_t)(c - sig);
		if (sig[off] == '\n')
			continue;
		sig[off] ^= 1;
		if (lora_sshsig_verify(sig, sl, LORA_SIG_NAMESPACE, msg, ml, NULL, &err) == 0)
			accepted++;
		sig[off] ^= 1;
	}
	CHECKF(accepted == 0, "%d one-bit changes accepted", accepted);
	CHECK(lora_sshsig_verify("junk", 4, LORA_SIG_NAMESPACE, msg, ml, NULL, &err) < 0 && err.code == LORA_EVERIFY);
	lora_sshkey_wipe(&k);
	free(mine);
	free(msg);
	free(sig);
	free(sig256);
	free(sigfile);
	free(p);
}

TEST(allowed_signers_decide_as_ssh_keygen)
{
	struct lora_signers s;
	struct lora_err err = { 0 };
	struct lora_sshsig sig;
	size_t n, sl;
	char *p = t_fixture("store/keys/allowed_signers"), *tj = slurp("store/keys/trust.json", &n);
	char *sigtext = slurp("store/keys/message.sig", &sl);
	cJSON *arr = tj ? cJSON_Parse(tj) : NULL, *e;
	int cases = 0;

	CHECK(lora_signers_load(p, &s, &err) == 0);
	CHECK(lora_sshsig_parse(sigtext, sl, &sig, &err) == 0);
	CHECK(arr && cJSON_GetArraySize(arr) >= 20);
	cJSON_ArrayForEach(e, arr) {
		const char *id = cJSON_GetObjectItem(e, "identity")->valuestring;
		const char *ns = cJSON_GetObjectItem(e, "namespace")->valuestring;
		int want = cJSON_IsTrue(cJSON_GetObjectItem(e, "accepted"));
		char why[256] = "";
		int got = lora_signers_trusts(&s, sig.pk, id, ns, time(NULL), NULL, why);
		CHECKF(got == want, "identity '%s' namespace '%s': ssh-keygen %s, lora %s (%s)", id, ns,
		       want ? "accepts" : "refuses", got ? "accepts" : "refuses", why);
		if (!got)
			CHECK(why[0] != 0);
		cases++;
	}
	CHECK(cases >= 20);
	/* the broken line is reported, the RSA line is listed with its fingerprint */
	int broken = 0, rsa = 0;
	for (size_t i = 0; i < s.n; i++) {
		if (s.v[i].error && !strcmp(s.v[i].principals, "broken@example.com"))
			broken = 1;
		if (!strcmp(s.v[i].keytype, "ssh-rsa") && !strncmp(s.v[i].fingerprint, "SHA256:", 7))
			rsa = 1;
	}
	CHECK(broken && rsa);
	lora_signers_free(&s);
	cJSON_Delete(arr);
	free(tj);
	free(sigtext);
	free(p);
}

TEST(pattern_lists)
{
	CHECK(lora_pattern_list_match("a@b", "a@b"));
	CHECK(lora_pattern_list_match("a@b", "x,a@b"));
	CHECK(lora_pattern_list_match("a@b", "*@b"));
	CHECK(lora_pattern_list_match("a@b", "?@?"));
	CHECK(!lora_pattern_list_match("aa@b", "?@b"));
	CHECK(!lora_pattern_list_match("a@b", "*@b,!a@b"));
	CHECK(!lora_pattern_list_match("a@b", "!a@b,*"));
	CHECK(lora_pattern_list_match("lora-adapter", "lora-*"));
	CHECK(!lora_pattern_list_match("lora-adapter", "file,git"));
	CHECK(lora_pattern_list_match("", "*"));
	CHECK(!lora_pattern_list_match("x", ""));
}

int main(void)
{
	RUN(base64_rfc4648_vectors);
	RUN(private_key_from_ssh_keygen);
	RUN(keys_refused_clearly);
	RUN(generated_key_is_consistent);
	RUN(key_file_written_exclusively);
	RUN(sshsig_interop);
	RUN(allowed_signers_decide_as_ssh_keygen);
	RUN(pattern_lists);
	return t_done();
}
