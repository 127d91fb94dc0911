/* A stub of the Apple SDK header, for type checks and archive builds on Linux only (see
 * .ci/apple.sh). A Mac build uses Xcode's SDK through xcrun and never sees this file. */
#pragma once
#if defined(__APPLE__)
#define TARGET_OS_MAC 1
#if defined(__ENVIRONMENT_IPHONE_OS_VERSION_MIN_REQUIRED__) || defined(__ENVIRONMENT_IOS__)
#define TARGET_OS_IPHONE 1
#define TARGET_OS_IOS 1
#define TARGET_OS_OSX 0
#elif defined(__ENVIRONMENT_TV_OS_VERSION_MIN_REQUIRED__) || defined(__ENVIRONMENT_TVOS__)
#define TARGET_OS_IPHONE 1
#define TARGET_OS_TV 1
#define TARGET_OS_OSX 0
#else
#define TARGET_OS_IPHONE 0
#define TARGET_OS_OSX 1
#endif
#endif
