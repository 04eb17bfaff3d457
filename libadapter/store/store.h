/*
 * store.h - the local adapter store: an OCI image layout of signed packages.
 *
 * On disk ($LORA_HOME, default ${XDG_DATA_HOME:-~/.local/share}/lora):
 *
 *   oci-layout                 {"imageLayoutVersion": "1.0.0"}
 *   index.json                 an OCI image index; one entry per NAME:TAG, named by the
 *                              annotation org.opencontainers.image.ref.name = "NAME:TAG"
 *   blobs/sha256/<hex>         content-addressed blobs (each file stored once)
 *   allowed_signers            the OpenSSH trust list (lora trust)
 *   keys/                      the default signing key (lora keygen)
 *   tmp/                       work space of running imports (removed by GC)
 *   .lock-gc, .lock-index      flock(2) files, see below
 *
 * One adapter version is one OCI image manifest:
 *   artifactType  application/vnd.lora.adapter.v1+json
 *   config        the package's manifest.json (LORA_MEDIA_MANIFEST)
 *   layers        every other package file, in package order (manifest.json.sig,
 *                 adapter_config.json, adapter_model.safetensors, extras), each with
 *                 the annotation org.opencontainers.image.title = its file name.
 * The digest of an adapter is the sha256 of that OCI manifest.
 *
 * Concurrency: writers take .lock-gc shared while they write blobs and keep
 * it until their index.json entry is in; index.json is read-modified-written
 * under .lock-index (exclusive) and replaced by rename.  Garbage collection
 * (after rm, tag or a replacing import) takes .lock-gc exclusive, so it never
 * removes the blobs of an import in flight.  Lock order: gc before index.
 * Readers take no lock: index.json and blobs only ever appear by rename.
 *
 * REF is NAME[:TAG] (TAG "latest" when absent) or "sha256:" and at least 8
 * hex digits of an adapter digest; a prefix matching several adapters is an
 * error listing them.  NAME is [A-Za-z0-9][A-Za-z0-9._-]* (at most 128
 * characters, not "sha256"); TAG is [A-Za-z0-9_][A-Za-z0-9._-]* (at most 128).
 *
 * Every function returns 0 (or a count) on success and -1 with err filled on
 * failure; err->code is LORA_EVERIFY (exit 3) when a digest, a signature or
 * the trust check failed, LORA_EUSAGE for a malformed REF.
 */
#ifndef LORA_STORE_H
#define LORA_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#include "libadapter/base/err.h"
#include "libadapter/format/peft.h"

#define LORA_ARTIFACT_TYPE "application/vnd.lora.adapter.v1+json"
#define LORA_MEDIA_MANIFEST "application/vnd.lora.adapter.manifest.v1+json"
#define LORA_REF_MAX 258             /* "NAME:TAG" + NUL */

/* ------------------------------------------------------------ adapters */

/*
 * What a user typed as an adapter: a PEFT folder path, a .lora file path, or
 * a store REF (NAME[:TAG] or sha256:PREFIX), opened as a PEFT adapter.
 *
 * Resolution: an existing directory is a PEFT folder; an existing regular
 * file is a .lora package (fully verified: digests, signature and trust, then
 * extracted into a temporary folder under tmp_dir, NULL: /tmp, removed by
 * close); anything else is a
 * REF looked up in store_dir.  A stored adapter is opened straight from its
 * blobs (digests were checked at import; `lora verify` re-checks them).
 *
 *     struct lora_adapter_src a;
 *     if (lora_adapter_open(ctx->store, ctx->tmp_dir, "sql:v2", &a, &err) < 0) return cmd_fail(&err);
 *     ... a.peft->modules ...
 *     lora_adapter_close(&a);
 */
struct lora_adapter_src {
	struct lora_peft *peft;
	char ref[256];           /* "name:tag", or the path as given */
	char digest[72];         /* "sha256:<hex>" of the OCI manifest, or "" for a plain folder */
	char *base_name;         /* from manifest (or adapter_config base_model_name_or_path), may be NULL */
	char *base_fingerprint;  /* "sha256:..." from manifest, or NULL when unknown */
	char *tmpdir;            /* internal: extraction dir to remove on close, or NULL */
};
int lora_adapter_open(const char *store_dir, const char *tmp_dir, const char *spec,
		      struct lora_adapter_src *out, struct lora_err *err);
/* Safe on a zeroed or already closed struct. */
void lora_adapter_close(struct lora_adapter_src *a);

/* ------------------------------------------------------------- import */

/*
 * Package a PEFT folder, sign it with the store's default key (or key_path),
 * and add it to the store as ref (NAME[:TAG]), replacing what that name held.
 * Used by `lora import DIR` and by train/combine/extract.  The folder is
 * validated (lora_peft_open) first.  README.md, training_log.jsonl and
 * loss.svg found in the folder are packaged too, as are extra_files.
 * digest_out (may be NULL) receives "sha256:<hex>".
 */
struct lora_import_opts {
	const char *key_path;       /* NULL: the store's default key */
	const char *description;    /* may be NULL */
	const char *base_fingerprint; /* may be NULL */
	const char *provenance_json;  /* a JSON object text for manifest "provenance", may be NULL */
	const char *const *extra_files; size_t n_extra; /* paths of optional files (README.md, training_log.jsonl, loss.svg) */
	void (*progress)(void *ctx, double done, double total); /* bytes copied so far, may be NULL */
	void *progress_ctx;
	const char *created;        /* the manifest's RFC 3339 "created" time; NULL: now */
	const char *user;           /* signer identity user@host of a key without a comment; NULL: the
				       login name (getpwuid) */
};
int lora_store_add_peft_dir(const char *store_dir, const char *peft_dir, const char *ref,
			    const struct lora_import_opts *opts, char digest_out[72], struct lora_err *err);

/*
 * Fails (with the message the user should see) when no signing key is
 * usable: key_path unreadable/encrypted, or key_path NULL and no default key
 * (run `lora keygen`).  Long jobs call it before they start.
 */
int lora_store_check_signing_key(const char *store_dir, const char *key_path, struct lora_err *err);

/*
 * Import a .lora package: every entry checked (lora-package(5)), digests,
 * signature and signer trust verified (allow_untrusted accepts an unsigned
 * package or an unknown signer, never a bad signature or digest), then added
 * as ref (NULL: the manifest's name and tag).  ref_out and digest_out may be
 * NULL.  On any failure the store is unchanged.
 */
int lora_store_import_package(const char *store_dir, const char *pkg_path, const char *ref,
			      int allow_untrusted, char ref_out[LORA_REF_MAX], char digest_out[72],
			      struct lora_err *err);
/* The same, reporting the bytes of the package read so far (progress may be NULL). */
int lora_store_import_package_progress(const char *store_dir, const char *pkg_path, const char *ref,
				       int allow_untrusted, char ref_out[LORA_REF_MAX], char digest_out[72],
				       void (*progress)(void *ctx, double done, double total), void *progress_ctx,
				       struct lora_err *err);

/* ---------------------------------------------------------- reading */

/* Resolve REF to the adapter digest; ref_out (may be NULL) gets "NAME:TAG" or the first name. */
int lora_store_resolve(const char *store_dir, const char *spec, char digest_out[72],
		       char ref_out[LORA_REF_MAX], struct lora_err *err);

struct lora_store_item {
	char ref[LORA_REF_MAX];      /* "NAME:TAG" */
	char digest[72];             /* "sha256:<hex>" of the OCI manifest */
	uint64_t size;               /* bytes of all files (manifest.json and layers) */
	int has_signature;           /* a manifest.json.sig layer is present (not verified) */
	cJSON *manifest;             /* the parsed manifest.json (NULL when unreadable) */
};
/* Every named entry of index.json, sorted by ref.  A missing store is an empty list. */
int lora_store_list(const char *store_dir, struct lora_store_item **items, size_t *n,
		    struct lora_err *err);
void lora_store_items_free(struct lora_store_item *items, size_t n);

/*
 * For `lora inspect` of a store REF or a .lora file: a cJSON object
 *   { "ref": "name:tag" | path, "digest": "sha256:..." | null,
 *     "manifest": {...manifest.json...},
 *     "signer": {"identity": ..., "key_fingerprint": "SHA256:...", "trusted": bool} | null,
 *     "verified": bool, "verify_error": "which check failed: why" | null,
 *     "files": [{"name", "size", "sha256"}, ...] }
 * Verification failure is reported inside the object (return 0); -1 only
 * when the REF does not resolve or the package cannot be read at all.
 */
int lora_store_describe(const char *store_dir, const char *spec, cJSON **out_json,
			struct lora_err *err);

/* ------------------------------------------------------------ verify */

enum lora_check_state { LORA_CHECK_SKIP = 0, LORA_CHECK_OK, LORA_CHECK_FAIL };

/* The checks in the order they run; a failure makes the later ones SKIP. */
enum lora_check {
	LORA_CHK_PACKAGE = 0,  /* archive entries / OCI layout and blob digests */
	LORA_CHK_MANIFEST,     /* manifest.json parses and is complete */
	LORA_CHK_FILES,        /* every file present once, size and sha256 as listed */
	LORA_CHK_SIGNATURE,    /* manifest.json.sig is a valid SSHSIG over manifest.json */
	LORA_CHK_SIGNER,       /* the key is in allowed_signers for the named identity */
	LORA_N_CHECKS
};

struct lora_verify_report {
	enum lora_check_state state[LORA_N_CHECKS];
	char detail[LORA_N_CHECKS][512];  /* what was checked or why it failed */
	int valid;                   /* every check OK */
	char ref[LORA_REF_MAX];      /* resolved ref, or "" for a file */
	char digest[72];             /* adapter digest, or "" for a file */
	char identity[256];          /* signer identity named by the manifest */
	char key_fingerprint[64];    /* "SHA256:..." of the signing key, or "" */
	size_t n_files;
};
/* Name of a check ("package", "manifest", "files", "signature", "signer"). */
const char *lora_check_name(enum lora_check c);

/*
 * Verify a store REF or a .lora file (an existing path).  Returns 0 when the
 * checks could run (rep->valid says the verdict; err describes the first
 * failed check with code LORA_EVERIFY when not valid), -1 when the REF does
 * not resolve or the file cannot be opened.
 */
int lora_store_verify(const char *store_dir, const char *spec, struct lora_verify_report *rep,
		      struct lora_err *err);

/* ------------------------------------------------------------ export */

/* Write the stored package as a .lora file (out_path "-" = stdout), atomically. */
int lora_store_export_lora(const char *store_dir, const char *spec, const char *out_path,
			   struct lora_err *err);
/* Write the package files into out_dir (must not exist or be empty): what `tar -x` gives. */
int lora_store_export_peft(const char *store_dir, const char *spec, const char *out_dir,
			   struct lora_err *err);

/* ---------------------------------------------------------- rm / tag */

/*
 * Remove a name (NAME[:TAG]), or every name of a digest (sha256:PREFIX),
 * then the blobs nothing refers to.  Returns the number of names removed;
 * `removed` (may be NULL) gets a malloc'd, newline-separated list of them.
 */
int lora_store_rm(const char *store_dir, const char *spec, char **removed, struct lora_err *err);
/* Point NAME[:TAG] at the adapter REF names (replacing what it held). */
int lora_store_tag(const char *store_dir, const char *spec, const char *new_ref, struct lora_err *err);

/* ------------------------------------------------------- keys, trust */

/*
 * Make a new Ed25519 key pair in <store>/keys/ (id_ed25519 created O_EXCL
 * mode 0600, id_ed25519.pub), identity `id` (NULL: login@hostname) as its
 * comment, make it the default key and trust it in allowed_signers.
 * An existing default key is an error unless force.  publine_out (may be
 * NULL) gets a malloc'd "ssh-ed25519 AAAA... ID".
 */
/* "user@hostname" (user NULL or "": the login name), spaces and quotes as '_'. */
void lora_store_default_identity(const char *user, char out[256]);
int lora_store_keygen(const char *store_dir, const char *id, int force, char **publine_out,
		      struct lora_err *err);
/* malloc'd path of <store>/allowed_signers. */
char *lora_store_allowed_signers_path(const char *store_dir);
/* Add "ID namespaces=\"lora-adapter\" ssh-ed25519 KEY" (pubkey_text: a public key line). */
int lora_store_trust_add(const char *store_dir, const char *id, const char *pubkey_text,
			 struct lora_err *err);
/* Remove ID from allowed_signers; returns the number of keys it held (0 is an error). */
int lora_store_trust_rm(const char *store_dir, const char *id, struct lora_err *err);

/* ------------------------------------------ for the registry client */

/* malloc'd path of blobs/sha256/<hex> for "sha256:<hex>" (NULL when the digest is malformed). */
char *lora_store_blob_path(const char *store_dir, const char *digest);

/*
 * The OCI manifest of a stored adapter, as stored (re-hashed against its
 * digest), for `lora push`.  *json is malloc'd; digest and ref_out (may be
 * NULL) get the adapter's digest and NAME:TAG.
 */
int lora_store_oci_read(const char *store_dir, const char *spec, char **json, size_t *len, char digest[72],
			char ref_out[LORA_REF_MAX], struct lora_err *err);

/*
 * A download in progress (`lora pull`): a work folder <store>/tmp/import-XXXXXX
 * and .lock-gc held shared, so no garbage collection runs under it.  Begin
 * first collects what killed imports left behind (when nobody writes).
 * The caller writes each blob there as <hex> (only once it has checked its
 * digest and size), then commits: the artifact is verified as `lora import`
 * verifies a package (manifest, every file's size and sha256, signature,
 * trusted signer, usable adapter files) and added as ref (NULL: the
 * manifest's NAME:TAG) in one transaction, with its OCI manifest stored
 * byte for byte, so the local digest is the registry's.  Blobs the store
 * already has need not be downloaded.  On any failure the store is
 * unchanged.  End removes the folder and drops the lock (always call it).
 *
 *     struct lora_store_stage st;
 *     if (lora_store_stage_begin(store, &st, err) < 0) return -1;
 *     ... download blobs into st.dir ...
 *     rc = lora_store_stage_commit(store, &st, oci, len, "host/repo:tag", NULL, 0, ref, digest, err);
 *     lora_store_stage_end(&st);
 */
struct lora_store_stage {
	char *dir;                   /* the work folder */
	int gfd;                     /* internal: the .lock-gc descriptor */
};
int lora_store_stage_begin(const char *store_dir, struct lora_store_stage *s, struct lora_err *err);
int lora_store_stage_commit(const char *store_dir, struct lora_store_stage *s, const char *oci, size_t len,
			    const char *label, const char *ref, int allow_untrusted, char ref_out[LORA_REF_MAX],
			    char digest_out[72], struct lora_err *err);
void lora_store_stage_end(struct lora_store_stage *s);

/* ---------------------------------------------------------- refs */

struct lora_ref {
	int is_digest;
	char name[129];
	char tag[129];
	char digest_prefix[72];      /* "sha256:" + 8..64 lowercase hex */
};
/* Parse a REF; LORA_EUSAGE on a malformed one. */
int lora_ref_parse(const char *s, struct lora_ref *out, struct lora_err *err);

#endif
