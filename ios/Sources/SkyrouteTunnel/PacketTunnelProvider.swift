import Foundation
import Network
import NetworkExtension
import os.log
import Skyroute

/// The iOS VPN: a skyroute node inside the network extension, a tunnel to the gateway over
/// every route its session finds, and `packetFlow` moved through the tunnel's packet calls.
/// The provider configuration carries "gateway" (public key), and optionally "config" (the
/// node's TOML) and "routes". Every radio at once: the path monitor's interfaces (WiFi and
/// cellular, both when both are up) go to the node at each change, and the node binds a
/// socket to each with `IP_BOUND_IF` (the interface index), so its routes leave through both
/// radios rather than only the default one. (The extension's own sockets bypass the tunnel
/// on iOS, so no protect() is needed.)
open class PacketTunnelProvider: NEPacketTunnelProvider {
    private let log = OSLog(subsystem: "net.skyroute", category: "tunnel")
    private var node: Node?
    private var tunnel: Tunnel?
    private var monitor: NWPathMonitor?
    private let queue = DispatchQueue(label: "net.skyroute.tunnel")
    private var running = false

    private final class Listener: NodeListener {
        let log: OSLog
        init(log: OSLog) { self.log = log }
        func onEvent(event: NodeEvent) { os_log("%{public}@", log: log, type: .info, String(describing: event)) }
        func onLog(level: LogLevel, message: String) {
            os_log("%{public}@", log: log, type: level == .error ? .error : .info, message)
        }
    }

    open override func startTunnel(options: [String: NSObject]?, completionHandler: @escaping (Error?) -> Void) {
        let conf = (protocolConfiguration as? NETunnelProviderProtocol)?.providerConfiguration ?? [:]
        guard let gateway = conf["gateway"] as? String else {
            completionHandler(NSError(domain: "net.skyroute", code: 1, userInfo: [NSLocalizedDescriptionKey: "no gateway configured"]))
            return
        }
        let config = conf["config"] as? String ?? ""
        let routes = UInt32(conf["routes"] as? Int ?? 0)
        queue.async {
            do {
                let dir = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0]
                    .appendingPathComponent("skyroute").path
                let node = try Node.start(config: config, dataDir: dir, listener: Listener(log: self.log), protector: nil)
                let tunnel = try node.startTunnel(gateway: gateway, routes: routes)
                self.node = node
                self.tunnel = tunnel
                let settings = NEPacketTunnelNetworkSettings(tunnelRemoteAddress: tunnel.gatewayAddress())
                let ipv4 = NEIPv4Settings(addresses: [tunnel.address()], subnetMasks: [Self.mask(tunnel.prefixLen())])
                ipv4.includedRoutes = [NEIPv4Route.default()]
                settings.ipv4Settings = ipv4
                // All IPv6 goes into the tunnel too: carried when the gateway has IPv6, else
                // answered "no route" by the node at once (a local address stands in), so
                // nothing leaks and applications fall back to IPv4.
                let ipv6 = NEIPv6Settings(
                    addresses: [tunnel.address6() ?? "fdff::1"],
                    networkPrefixLengths: [NSNumber(value: tunnel.address6() == nil ? 128 : tunnel.prefix6Len())])
                ipv6.includedRoutes = [NEIPv6Route.default()]
                settings.ipv6Settings = ipv6
                settings.mtu = NSNumber(value: tunnel.mtu())
                // The gateway's resolvers, reached through the tunnel; every name goes to them.
                let dns = NEDNSSettings(servers: tunnel.dnsServers())
                dns.matchDomains = [""]
                if !tunnel.dnsServers().isEmpty { settings.dnsSettings = dns }
                self.setTunnelNetworkSettings(settings) { error in
                    if let error = error {
                        completionHandler(error)
                        return
                    }
                    self.running = true
                    self.watchPath()
                    self.readFromSystem()
                    self.writeToSystem()
                    completionHandler(nil)
                }
            } catch {
                os_log("start failed: %{public}@", log: self.log, type: .error, String(describing: error))
                completionHandler(error)
            }
        }
    }

    /// packetFlow -> tunnel.
    private func readFromSystem() {
        packetFlow.readPackets { [weak self] packets, _ in
            guard let self = self, self.running, let tunnel = self.tunnel else { return }
            for p in packets {
                // A full queue drops the packet (the sender's TCP resends); other errors end.
                do { try tunnel.sendPacket(packet: p) } catch SkyrouteError.QueueFull {} catch { return }
            }
            self.readFromSystem()
        }
    }

    /// tunnel -> packetFlow, on its own thread (recvPacket blocks up to its timeout).
    private func writeToSystem() {
        Thread {
            while self.running, let tunnel = self.tunnel {
                guard let p = try? tunnel.recvPacket(timeoutMs: 500) else { break }
                if let p = p {
                    let family = (p.first.map { $0 >> 4 } == 6) ? AF_INET6 : AF_INET
                    self.packetFlow.writePackets([p], withProtocols: [NSNumber(value: family)])
                }
            }
        }.start()
    }

    private func watchPath() {
        let m = NWPathMonitor()
        m.pathUpdateHandler = { [weak self] path in
            try? self?.node?.networkChanged(networks: Self.networks(path))
        }
        m.start(queue: queue)
        monitor = m
    }

    /// The path's usable interfaces as the node's networks (cellular is metered; the index
    /// is what `IP_BOUND_IF` takes).
    static func networks(_ path: NWPath) -> [NetworkInfo] {
        guard path.status == .satisfied else { return [] }
        return path.availableInterfaces.compactMap { i in
            let kind: NetworkKind
            switch i.type {
            case .wifi: kind = .wifi
            case .cellular: kind = .cellular
            case .wiredEthernet: kind = .ethernet
            case .loopback: return nil
            default: kind = .other
            }
            // Our own tunnel's utun is "other": never a way out for the node itself.
            if i.name.hasPrefix("utun") || i.name.hasPrefix("ipsec") { return nil }
            return NetworkInfo(id: UInt64(i.index), name: i.name, kind: kind,
                               metered: kind == .cellular || path.isExpensive, up: true, index: UInt32(i.index))
        }
    }

    open override func stopTunnel(with reason: NEProviderStopReason, completionHandler: @escaping () -> Void) {
        running = false
        monitor?.cancel()
        try? tunnel?.stop()
        try? node?.stop()
        tunnel = nil
        node = nil
        completionHandler()
    }

    private static func mask(_ len: UInt8) -> String {
        let m: UInt32 = len == 0 ? 0 : ~UInt32(0) << (32 - UInt32(len))
        return [24, 16, 8, 0].map { String((m >> $0) & 0xff) }.joined(separator: ".")
    }
}
