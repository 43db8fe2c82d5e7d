// Command pause holds a pod's namespaces open: it does nothing until told to stop.
//
// As PID 1 of the pod sandbox it also reaps any child that is re-parented to it, so zombies
// never pile up, and it exits on SIGTERM or SIGINT (the kubelet's way to stop a sandbox).
//
// With -http ADDR it is also the test bed's smallest workload: it answers every request with
// 200 and the host name (a pod's name), so tests of probes and Service routing need no image
// pulled from anywhere. -v prints its name.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func serve(addr string) {
	host, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, host)
	})
	if err := http.ListenAndServe(addr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "pause:", err)
		os.Exit(1)
	}
}

func main() {
	version := flag.Bool("v", false, "print the program's name and exit")
	addr := flag.String("http", "", "also answer HTTP on this address (host:port)")
	flag.Parse()
	if *version {
		fmt.Println("elastiserve-pause")
		return
	}
	if *addr != "" {
		go serve(*addr)
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reap()
			continue
		}
		os.Exit(0)
	}
}
