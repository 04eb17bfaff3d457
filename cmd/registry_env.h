/*
 * registry_env.h - where push and pull find registry credentials: the
 * Docker config, $DOCKER_CONFIG/config.json or ~/.docker/config.json (the
 * library never reads the environment).
 */
#ifndef LORA_CMD_REGISTRY_ENV_H
#define LORA_CMD_REGISTRY_ENV_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* malloc'd path of the Docker config.json to read (it may not exist), or NULL. */
static inline char *cmd_docker_config(void)
{
	const char *d = getenv("DOCKER_CONFIG"), *h = getenv("HOME");
	const char *base = d && *d ? d : h && *h ? h : NULL;
	size_t n;
	char *p;

	if (!base)
		return NULL;
	n = strlen(base) + 32;
	p = malloc(n);
	if (p)
		snprintf(p, n, "%s%s/config.json", base, d && *d ? "" : "/.docker");
	return p;
}

#endif
