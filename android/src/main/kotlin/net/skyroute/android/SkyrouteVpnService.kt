package net.skyroute.android

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.content.Intent
import android.net.ConnectivityManager
import android.net.LinkProperties
import android.net.Network
import android.net.NetworkCapabilities
import android.net.NetworkRequest
import android.net.VpnService
import android.os.Build
import android.os.ParcelFileDescriptor
import android.util.Log
import java.util.concurrent.ConcurrentHashMap
import net.skyroute.LogLevel
import net.skyroute.NetworkInfo
import net.skyroute.NetworkKind
import net.skyroute.Node
import net.skyroute.NodeEvent
import net.skyroute.NodeListener
import net.skyroute.SkyrouteException
import net.skyroute.SocketProtector
import net.skyroute.TunFraming
import net.skyroute.Tunnel

/**
 * The phone's VPN: a skyroute node in this process, a tunnel to the gateway over every route
 * the session finds (WiFi, LTE, neighbours), and the VpnService interface on top of it.
 *
 * Start it with an Intent carrying [EXTRA_GATEWAY] (the gateway's public key) and optionally
 * [EXTRA_CONFIG] (the node's TOML: peers, session routes). The node's own sockets are excluded
 * from the VPN through [protect].
 *
 * Every radio at once: Android sends an app's sockets over the default network only (WiFi
 * whenever it is up), so the service asks for cellular as well (`requestNetwork` keeps it up
 * beside WiFi), reports every network it has (handle, kind, metered) to the node on each
 * change, and binds each socket the node asks for to its network (`Network.bindSocket`). The
 * node dials its neighbours over each network: routes leave through WiFi and LTE at once, and
 * a lost network takes its links down at once instead of after a timeout.
 */
class SkyrouteVpnService : VpnService() {
    companion object {
        const val EXTRA_GATEWAY = "net.skyroute.GATEWAY"
        const val EXTRA_CONFIG = "net.skyroute.CONFIG"
        const val EXTRA_ROUTES = "net.skyroute.ROUTES"
        const val ACTION_STOP = "net.skyroute.STOP"
        private const val TAG = "skyroute"
        private const val CHANNEL = "skyroute-vpn"
        private const val NOTIFICATION_ID = 1
    }

    @Volatile private var node: Node? = null
    @Volatile private var tunnel: Tunnel? = null
    private var worker: Thread? = null

    private val listener = object : NodeListener {
        override fun onEvent(event: NodeEvent) {
            when (event) {
                is NodeEvent.TunnelUp -> notify("Connected: ${event.address}")
                is NodeEvent.TunnelDown -> notify("Disconnected")
                is NodeEvent.SessionChanged -> notify("Connected over ${event.routes} routes")
                else -> Log.d(TAG, event.toString())
            }
        }

        override fun onLog(level: LogLevel, message: String) {
            // android_logger already writes the node's lines to logcat; keep the last error.
            if (level == LogLevel.ERROR) Log.e(TAG, message)
        }
    }

    /** The networks the node may use, by handle, with what we last heard of them. */
    private class Known(val network: Network, var caps: NetworkCapabilities?, var link: LinkProperties?)
    private val networks = ConcurrentHashMap<Long, Known>()

    /** Every socket the node opens stays outside the VPN; the ones it asks for are bound to
     *  the network whose handle it gives. */
    private val protector = object : SocketProtector {
        override fun protect(fd: Int): Boolean = this@SkyrouteVpnService.protect(fd)

        override fun bindToNetwork(fd: Int, network: ULong): Boolean {
            val known = networks[network.toLong()] ?: return false
            return try {
                // fromFd duplicates the descriptor: binding applies to the socket both share.
                ParcelFileDescriptor.fromFd(fd).use { known.network.bindSocket(it.fileDescriptor) }
                true
            } catch (e: Exception) {
                Log.w(TAG, "bindSocket on $network: $e")
                false
            }
        }
    }

    private val networkCallback = object : ConnectivityManager.NetworkCallback() {
        override fun onAvailable(network: Network) {
            networks.getOrPut(network.networkHandle) { Known(network, null, null) }
            report()
        }
        override fun onLost(network: Network) {
            networks.remove(network.networkHandle)
            report()
        }
        override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) {
            networks.getOrPut(network.networkHandle) { Known(network, null, null) }.caps = caps
            report()
        }
        override fun onLinkPropertiesChanged(network: Network, link: LinkProperties) {
            networks.getOrPut(network.networkHandle) { Known(network, null, null) }.link = link
            report()
        }
    }

    /** Keeps cellular up beside WiFi (without a request Android tears it down when WiFi is up). */
    private val cellularCallback = object : ConnectivityManager.NetworkCallback() {}

    /** Tells the node every network we have now. */
    private fun report() {
        val list = networks.entries.mapNotNull { (handle, k) ->
            val caps = k.caps ?: return@mapNotNull null
            val name = k.link?.interfaceName ?: return@mapNotNull null
            val kind = when {
                caps.hasTransport(NetworkCapabilities.TRANSPORT_WIFI) -> NetworkKind.WIFI
                caps.hasTransport(NetworkCapabilities.TRANSPORT_CELLULAR) -> NetworkKind.CELLULAR
                caps.hasTransport(NetworkCapabilities.TRANSPORT_ETHERNET) -> NetworkKind.ETHERNET
                else -> NetworkKind.OTHER
            }
            val metered = !caps.hasCapability(NetworkCapabilities.NET_CAPABILITY_NOT_METERED)
            NetworkInfo(handle.toULong(), name, kind, metered, true, 0u)
        }
        try {
            node?.networkChanged(list)
            setUnderlyingNetworks(networks.values.map { it.network }.toTypedArray())
        } catch (e: SkyrouteException) {
            Log.w(TAG, "network_changed: $e")
        }
    }

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        if (intent?.action == ACTION_STOP) {
            shutdown()
            stopSelf()
            return START_NOT_STICKY
        }
        val gateway = intent?.getStringExtra(EXTRA_GATEWAY) ?: return START_NOT_STICKY
        val config = intent.getStringExtra(EXTRA_CONFIG) ?: ""
        val routes = intent.getIntExtra(EXTRA_ROUTES, 0)
        startForeground(NOTIFICATION_ID, notification("Connecting"))
        worker = Thread({ connect(gateway, config, routes) }, "skyroute-start").also { it.start() }
        return START_STICKY
    }

    private fun connect(gateway: String, config: String, routes: Int) {
        try {
            val n = Node.start(config, filesDir.resolve("skyroute").path, listener, protector)
            node = n
            val cm = getSystemService(ConnectivityManager::class.java)
            // Every network with internet except VPNs (ours included).
            cm.registerNetworkCallback(
                NetworkRequest.Builder()
                    .addCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET)
                    .addCapability(NetworkCapabilities.NET_CAPABILITY_NOT_VPN)
                    .build(),
                networkCallback,
            )
            cm.requestNetwork(
                NetworkRequest.Builder()
                    .addTransportType(NetworkCapabilities.TRANSPORT_CELLULAR)
                    .addCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET)
                    .build(),
                cellularCallback,
            )
            // The gateway assigns the address; the interface is built with it.
            val t = n.startTunnel(gateway, routes.toUInt())
            // All IPv6 goes into the tunnel too: carried when the gateway has IPv6, else
            // answered "no route" by the node at once (a local address stands in), so nothing
            // leaks and applications fall back to IPv4.
            val v6 = t.address6()
            val builder = Builder()
            // The gateway's resolvers, reached through the tunnel: no query leaves outside it.
            t.dnsServers().forEach { builder.addDnsServer(it) }
            val pfd = builder
                .setSession("skyroute")
                .addAddress(t.address(), t.prefixLen().toInt())
                .addAddress(v6 ?: "fdff::1", if (v6 == null) 128 else t.prefix6Len().toInt())
                .addRoute("0.0.0.0", 0)
                .addRoute("::", 0)
                .setMtu(t.mtu().toInt())
                .setBlocking(false)
                .establish() ?: throw IllegalStateException("VPN permission revoked")
            t.attachFd(pfd.detachFd(), TunFraming.PLAIN)
            tunnel = t
        } catch (e: Exception) {
            Log.e(TAG, "could not start the VPN: $e")
            notify("Failed: ${e.message}")
            shutdown()
            stopSelf()
        }
    }

    private fun shutdown() {
        val cm = getSystemService(ConnectivityManager::class.java)
        for (cb in listOf(networkCallback, cellularCallback)) {
            try {
                cm.unregisterNetworkCallback(cb)
            } catch (_: IllegalArgumentException) {
            }
        }
        networks.clear()
        try { tunnel?.stop() } catch (_: SkyrouteException) {}
        try { node?.stop() } catch (_: SkyrouteException) {}
        tunnel?.close(); node?.close()
        tunnel = null; node = null
    }

    override fun onRevoke() {
        shutdown()
        stopSelf()
    }

    override fun onDestroy() {
        shutdown()
        super.onDestroy()
    }

    private fun notification(text: String): Notification {
        val nm = getSystemService(NotificationManager::class.java)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O) {
            nm.createNotificationChannel(NotificationChannel(CHANNEL, "VPN", NotificationManager.IMPORTANCE_LOW))
        }
        val b = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O) Notification.Builder(this, CHANNEL)
                else @Suppress("DEPRECATION") Notification.Builder(this)
        return b.setContentTitle("skyroute").setContentText(text)
            .setSmallIcon(android.R.drawable.ic_lock_lock).setOngoing(true).build()
    }

    private fun notify(text: String) {
        getSystemService(NotificationManager::class.java).notify(NOTIFICATION_ID, notification(text))
    }
}
