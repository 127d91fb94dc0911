/* Stub SDK header for Linux-side Apple builds only (see .ci/apple.sh). */
#pragma once
#define assert(e) ((void)0)
