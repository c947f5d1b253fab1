package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/umbra-iot/umbra/client"
	"github.com/umbra-iot/umbra/wire"
)

// umbra cluster status: GET /v1/cluster (docs/cluster.md).

func newClusterCmd() *cobra.Command {
	o := &connOptions{}
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Show the cluster's nodes and store health over the HTTP API",
		Long: `Show a running Umbra's cluster through its HTTP API (GET /v1/cluster):
in cluster mode (umbra serve --nats) every live node with its address,
version and MQTT connection count, where rollouts are planned, and the
health of each replicated store bucket; a single-node server lists itself.
Any node answers for the whole cluster. See docs/cluster.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	o.addFlags(cmd.PersistentFlags())
	cmd.AddCommand(&cobra.Command{
		Use:     "status",
		Short:   "List the nodes, their connection counts, the planner and the store buckets' health",
		Example: "  umbra cluster status --api http://127.0.0.1:8080\n  umbra cluster status -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return query(cmd, o, func(ctx context.Context, c *client.Client) (wire.ClusterStatus, error) {
				return c.ClusterStatus(ctx)
			}, printClusterStatus)
		},
	})
	return cmd
}

// printClusterStatus is umbra cluster status's text output.
func printClusterStatus(w io.Writer, st wire.ClusterStatus) error {
	health := "healthy"
	if !st.Healthy {
		health = "UNHEALTHY"
	}
	planner := st.Planners
	if st.Planners == "lease" {
		planner = "lease held by " + orDash(st.Planner)
	}
	fmt.Fprintf(w, "mode: %s, %s; answered by node %s; planner: %s\n", st.Mode, health, orDash(st.Node), planner)
	for _, warn := range st.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", warn)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tVERSION\tCONNECTIONS\tSTARTED\tHEARTBEAT")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", orDash(n.ID), orDash(n.Addr), orDash(n.Version), n.Connections,
			timeOrDash(n.Started), timeOrDash(n.Heartbeat))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Buckets) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "BUCKET\tREPLICAS\tCURRENT\tLEADER\tKEYS\tBYTES\tHEALTH\tOFFLINE/LAGGING")
	for _, b := range st.Buckets {
		h := "ok"
		if !b.Healthy {
			h = "UNHEALTHY"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%d\t%s\t%s\n", b.Stream, b.Replicas, b.Current, orDash(b.Leader), b.Keys, b.Bytes, h,
			orDash(strings.Join(append(append([]string{}, b.Offline...), b.Lagging...), ",")))
	}
	return tw.Flush()
}
