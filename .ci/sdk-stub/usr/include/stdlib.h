/* Stub SDK header for Linux-side Apple builds only (see .ci/apple.sh). */
#pragma once
typedef __SIZE_TYPE__ size_t;
void abort(void);
void *malloc(size_t n);
void free(void *p);
