package net.skyroute.android

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.content.Intent
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.net.NetworkRequest
import android.net.VpnService
import android.os.Build
import android.util.Log
import net.skyroute.LogLevel
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
 * from the VPN through [protect]; connectivity changes are reported to the node so it probes
 * its links at once instead of waiting for a timeout.
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

    /** Every socket the node opens stays outside the VPN. */
    private val protector = object : SocketProtector {
        override fun protect(fd: Int): Boolean = this@SkyrouteVpnService.protect(fd)
    }

    private val networkCallback = object : ConnectivityManager.NetworkCallback() {
        override fun onAvailable(network: Network) = changed()
        override fun onLost(network: Network) = changed()
        override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) = changed()

        private fun changed() {
            try {
                node?.networkChanged()
            } catch (e: SkyrouteException) {
                Log.w(TAG, "network_changed: $e")
            }
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
            cm.registerNetworkCallback(
                NetworkRequest.Builder().addCapability(NetworkCapabilities.NET_CAPABILITY_INTERNET).build(),
                networkCallback,
            )
            // The gateway assigns the address; the interface is built with it.
            val t = n.startTunnel(gateway, routes.toUInt())
            val pfd = Builder()
                .setSession("skyroute")
                .addAddress(t.address(), t.prefixLen().toInt())
                .addRoute("0.0.0.0", 0)
                .addDnsServer(t.gatewayAddress())
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
        try {
            getSystemService(ConnectivityManager::class.java).unregisterNetworkCallback(networkCallback)
        } catch (_: IllegalArgumentException) {
        }
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
