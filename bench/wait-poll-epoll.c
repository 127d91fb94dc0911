/* What a reader's wait costs, by kind. A sender paces 1200-byte UDP datagrams over loopback;
 * the waiting thread wakes, drains the socket and waits again; its CPU time
 * (CLOCK_THREAD_CPUTIME_ID) is divided by the datagrams. The kinds alternate round by round:
 *   poll3   poll(2) on three descriptors (the socket and two wake pipes, as tunpipe's UDP
 *           reader waits; its TUN reader polls two), then receives until the socket is empty
 *           (the last receive finds nothing);
 *   epoll   epoll_wait(2) on a set holding the same three, then the same receives;
 *   block   a blocking recv(2), as the seed loop waits: no wake pipe, so nothing but a signal
 *           or a datagram could end it (the sender ends it with one);
 *   poll3-1 poll3, but one receive per wake-up (no receive that finds nothing);
 *   poll1   poll(2) on the socket alone, then receives until it is empty.
 * PERFORMANCE.md, "Energy" (runs RX and RK):
 *
 *   gcc -O2 -o /tmp/wait-poll-epoll bench/wait-poll-epoll.c -lpthread
 *   /tmp/wait-poll-epoll RATE SECONDS ROUNDS      (RX: 2000 3 10; RK: 2000 3 5, 20000 3 5)
 *
 * Not built by CI: a measurement of a mechanism, kept so that its figure can be made again. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <fcntl.h>
enum { POLL3, EPOLL, BLOCK, POLL3_ONE, POLL1, KINDS };
static const char *names[KINDS] = {"poll3", "epoll", "block", "poll3-1", "poll1"};
static int sock, p1[2], p2[2], mode, epfd; static volatile int done;
static long got; static double cpu_us;
static double tcpu(void){struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t); return t.tv_sec*1e6+t.tv_nsec/1e3;}
static void drain(char *buf, size_t len){ while(recv(sock,buf,len,MSG_DONTWAIT)>0) got++; }
static void *waiter(void*a){ char buf[2048]; double c0=tcpu();
  while(!done){
    if(mode==POLL3||mode==POLL3_ONE){ struct pollfd f[3]={{sock,POLLIN,0},{p1[0],POLLIN,0},{p2[0],POLLIN,0}}; poll(f,3,-1); if(f[1].revents) break;
      if(mode==POLL3) drain(buf,sizeof buf); else if(recv(sock,buf,sizeof buf,MSG_DONTWAIT)>0) got++; }
    else if(mode==POLL1){ struct pollfd f[1]={{sock,POLLIN,0}}; poll(f,1,-1); if(done) break; drain(buf,sizeof buf); }
    else if(mode==BLOCK){ if(recv(sock,buf,sizeof buf,0)>0 && !done) got++; }
    else { struct epoll_event ev[4]; int n=epoll_wait(epfd,ev,4,-1); int stop=0; for(int i=0;i<n;i++) if(ev[i].data.u32==1) stop=1; if(stop) break; drain(buf,sizeof buf); }
  }
  cpu_us=tcpu()-c0; return 0;}
int main(int argc,char**argv){ if(argc<4){fprintf(stderr,"usage: %s RATE SECONDS ROUNDS\n",argv[0]); return 2;}
 int rate=atoi(argv[1]); double secs=atof(argv[2]); int rounds=atoi(argv[3]);
 for(int r=0;r<rounds*KINDS;r++){ mode=r%KINDS; done=0; got=0;
  sock=socket(AF_INET6,SOCK_DGRAM,0); int z=0; setsockopt(sock,IPPROTO_IPV6,IPV6_V6ONLY,&z,4);
  struct sockaddr_in6 a={0}; a.sin6_family=AF_INET6; a.sin6_addr=in6addr_loopback; bind(sock,(void*)&a,sizeof a); socklen_t l=sizeof a; getsockname(sock,(void*)&a,&l);
  if(mode!=BLOCK) fcntl(sock,F_SETFL,O_NONBLOCK);
  pipe(p1); pipe(p2);
  epfd=epoll_create1(0); struct epoll_event e={EPOLLIN,{.u32=0}}; epoll_ctl(epfd,EPOLL_CTL_ADD,sock,&e); e.data.u32=1; epoll_ctl(epfd,EPOLL_CTL_ADD,p1[0],&e); e.data.u32=2; epoll_ctl(epfd,EPOLL_CTL_ADD,p2[0],&e);
  int s=socket(AF_INET6,SOCK_DGRAM,0); char msg[1200]={0};
  pthread_t t; pthread_create(&t,0,waiter,0);
  struct timespec next; clock_gettime(CLOCK_MONOTONIC,&next); long n=(long)(rate*secs);
  for(long i=0;i<n;i++){ next.tv_nsec+=1000000000L/rate; if(next.tv_nsec>=1000000000L){next.tv_sec++; next.tv_nsec-=1000000000L;} clock_nanosleep(CLOCK_MONOTONIC,TIMER_ABSTIME,&next,0); sendto(s,msg,sizeof msg,0,(void*)&a,sizeof a); }
  usleep(20000); done=1; write(p1[1],"x",1);
  if(mode==BLOCK||mode==POLL1) sendto(s,msg,1,0,(void*)&a,sizeof a); /* their only way to wake */
  pthread_join(t,0);
  printf("%s rate %d: %ld got, %.2f us CPU per datagram\n", names[mode], rate, got, cpu_us/got);
  close(sock);close(s);close(p1[0]);close(p1[1]);close(p2[0]);close(p2[1]);close(epfd);
 }}
