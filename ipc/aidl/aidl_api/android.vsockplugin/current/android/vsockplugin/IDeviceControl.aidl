package android.vsockplugin;

import android.vsockplugin.IDeviceEventListener;

/**
 * Status and steering of the vsock device. Payloads are protobuf messages of control.proto
 * (package vsockplugin) carried as byte[]: each request message has required_features (field 1);
 * a bit the server does not implement fails the call with UNSUPPORTED_FEATURE. An empty request
 * (zero bytes) is the all-defaults request.
 *
 * Call getCapabilities() first and only use what it advertises.
 */
interface IDeviceControl {
    /** -> Capabilities. Takes no options, never fails on a reachable server. */
    byte[] getCapabilities();

    /** StatusRequest -> Status (VMs, negotiated features, IOTLB mode, uptime). */
    byte[] getStatus(in byte[] request);

    /** ListConnectionsRequest -> ConnectionList. */
    byte[] listConnections(in byte[] request);

    /** MetricsRequest -> Metrics. */
    byte[] getMetrics(in byte[] request);

    /** SetPolicyRequest. Per-(cid, port) allow/deny and limits. */
    void setPolicy(in byte[] request);

    /** PolicyRequest -> PolicyList. */
    byte[] getPolicy(in byte[] request);

    /** RoutesRequest -> RouteList: which mapping serves each known port. */
    byte[] listRoutes(in byte[] request);

    /** ExplainRouteRequest -> RouteInfo: the mapping a guest connection would get now. */
    byte[] explainRoute(in byte[] request);

    /** Reset one connection. Takes no options: it must not fail for an unsupported one. */
    void resetConnection(long guestCid, int guestPort, int hostPort);

    /** Events go to listener until it dies or is unregistered. Needs FEATURE_EVENTS. */
    void registerEventListener(IDeviceEventListener listener);

    /** Errors: NOT_FOUND. */
    void unregisterEventListener(IDeviceEventListener listener);
}
