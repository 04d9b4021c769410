// How many queue threads a daemon may start (--queue-threads): the device loop reserves
// one epoll token per thread. Its own module so that option parsing can name the limit
// without loading the thread machinery.
export const MAX_QUEUE_THREADS = 8;
