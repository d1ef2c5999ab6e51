/* string.h for sync guests (wasm32-freestanding has no libc): the memory and string functions most code
 * needs, implemented in sync_libc.c, which `syncctl guest build` links into every C guest (unused ones are
 * dropped). */
#ifndef SYNC_GUEST_STRING_H
#define SYNC_GUEST_STRING_H
#include <stddef.h>
void *memcpy(void *dest, const void *src, size_t n);
void *memmove(void *dest, const void *src, size_t n);
void *memset(void *dest, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
void *memchr(const void *s, int c, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
char *strstr(const char *haystack, const char *needle);
#endif
