// The Kotlin bindings on the host JVM (JNA), as the Android app uses them: a gateway node and
// a client node through the bindings, a tunnel between them carrying packets both ways, the
// callbacks (events, log lines, socket protection), and the typed errors of bad calls.
// Prints a cargo-style "test result:" line; exit code 1 if any check failed.

import net.skyroute.*
import java.nio.file.Files
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.system.exitProcess

class Recorder : NodeListener {
    val events = CopyOnWriteArrayList<NodeEvent>()
    val logs = CopyOnWriteArrayList<String>()
    override fun onEvent(event: NodeEvent) { events.add(event) }
    override fun onLog(level: LogLevel, message: String) { logs.add("$level $message") }
}

class Protector : SocketProtector {
    val fds = CopyOnWriteArrayList<Int>()
    /** (socket, network handle) the node asked to bind; on the host nothing is bound for real
     *  (Android's Network.bindSocket), so the sockets still reach loopback. */
    val binds = CopyOnWriteArrayList<Pair<Int, ULong>>()
    override fun protect(fd: Int): Boolean { fds.add(fd); return true }
    override fun bindToNetwork(fd: Int, network: ULong): Boolean { binds.add(fd to network); return true }
}

/** A link of the node on `iface` in state `state`, from the status JSON. */
fun linkOn(node: Node, iface: String, state: String): Boolean =
    Regex("\"interface\":\"$iface\",\"addr\":\"[^\"]*\",\"state\":\"$state\"").containsMatchIn(node.status().json)

var passed = 0
var failed = 0

fun check(name: String, ok: Boolean, detail: () -> String = { "" }) {
    if (ok) {
        passed++
        println("test $name ... ok")
    } else {
        failed++
        println("test $name ... FAILED ${detail()}")
    }
}

inline fun <reified E : Throwable> throws(name: String, block: () -> Unit) {
    try {
        block()
        check(name, false) { "no exception" }
    } catch (e: Throwable) {
        check(name, e is E) { "threw $e" }
    }
}

fun waitFor(what: String, timeoutMs: Long = 20_000, cond: () -> Boolean): Boolean {
    val end = System.currentTimeMillis() + timeoutMs
    while (System.currentTimeMillis() < end) {
        if (cond()) return true
        Thread.sleep(20)
    }
    println("timed out waiting for $what")
    return false
}

fun addr(s: String): ByteArray = s.split(".").map { it.toInt().toByte() }.toByteArray()

/** IPv6 + UDP (the tunnel and the gateway check addresses, not the UDP checksum). */
fun udp6(src: ByteArray, dst: ByteArray, payload: ByteArray): ByteArray {
    val len = 8 + payload.size
    val p = ByteArray(40 + len)
    p[0] = 0x60; p[4] = (len shr 8).toByte(); p[5] = len.toByte(); p[6] = 17; p[7] = 64
    System.arraycopy(src, 0, p, 8, 16); System.arraycopy(dst, 0, p, 24, 16)
    p[40] = 0x13; p[41] = 0x88.toByte(); p[43] = 7; p[44] = (len shr 8).toByte(); p[45] = len.toByte()
    System.arraycopy(payload, 0, p, 48, payload.size)
    return p
}

/** IPv4 + UDP (UDP checksum zero, which IPv4 allows). */
fun udp(src: ByteArray, dst: ByteArray, payload: ByteArray): ByteArray {
    val total = 20 + 8 + payload.size
    val p = ByteArray(total)
    p[0] = 0x45; p[2] = (total shr 8).toByte(); p[3] = total.toByte(); p[8] = 64; p[9] = 17
    System.arraycopy(src, 0, p, 12, 4); System.arraycopy(dst, 0, p, 16, 4)
    var sum = 0
    for (i in 0 until 20 step 2) sum += ((p[i].toInt() and 0xff) shl 8) or (p[i + 1].toInt() and 0xff)
    while (sum shr 16 != 0) sum = (sum and 0xffff) + (sum shr 16)
    val c = sum.inv() and 0xffff
    p[10] = (c shr 8).toByte(); p[11] = c.toByte()
    p[20] = 0x13; p[21] = 0x88.toByte(); p[23] = 7; p[24] = ((8 + payload.size) shr 8).toByte(); p[25] = (8 + payload.size).toByte()
    System.arraycopy(payload, 0, p, 28, payload.size)
    return p
}

fun main() {
    val tmp = Files.createTempDirectory("skyroute-kotlin").toFile()
    val local = "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"off\"\nquic = \"off\"\n"
    check("version", version().isNotEmpty())
    check("check_config names the field", checkConfig("[listen]\nudp = \"nope\"")?.contains("listen.udp") == true)
    check("check_config accepts a good config", checkConfig(local) == null)

    val gwRec = Recorder()
    val gateway = Node.start("$local[gateway]\nopen = true\npool = \"10.77.0.0/16\"\n", "$tmp/gw", gwRec, null)
    val uplink = gateway.gatewayUplink()
    val gwUdp = gateway.listenAddresses().first { it.startsWith("udp://") }
    val rec = Recorder()
    val protector = Protector()
    val client = Node.start(
        "$local[[peers]]\nkey = \"${gateway.publicKey()}\"\naddr = \"$gwUdp\"\n", "$tmp/client", rec, protector,
    )
    check("the protector saw the node's socket", protector.fds.isNotEmpty()) { "${protector.fds}" }
    check("link up event", waitFor("link up") { rec.events.any { it is NodeEvent.LinkUp && it.peer == gateway.publicKey() } })
    check("status through the bindings", client.status().linksUp == 1u) { client.status().json }

    val tunnel = client.startTunnel(gateway.publicKey(), 1u)
    val me = tunnel.address()
    check("tunnel address from the pool", me.startsWith("10.77.")) { me }
    check("tunnel MTU: the gateway's default offer", tunnel.mtu() == 1420.toUShort()) { "${tunnel.mtu()}" }
    check("tunnel up event", waitFor("tunnel up") { rec.events.any { it is NodeEvent.TunnelUp && it.address == me } })

    val internet = addr("192.0.2.1")
    var roundTrips = 0
    for (size in listOf(20, 600, 1100)) {
        val payload = ByteArray(size) { (it * 7 + size).toByte() }
        tunnel.sendPacket(udp(addr(me), internet, payload))
        val out = uplink.recvPacket(5000u)
        if (out == null || !out.copyOfRange(12, 16).contentEquals(addr(me))) continue
        uplink.sendPacket(udp(internet, addr(me), out.copyOfRange(28, out.size)))
        val back = tunnel.recvPacket(5000u) ?: continue
        if (back.copyOfRange(28, back.size).contentEquals(payload) && back.copyOfRange(12, 16).contentEquals(internet)) roundTrips++
    }
    check("packets through the tunnel and the gateway and back", roundTrips == 3) { "$roundTrips of 3" }

    // IPv6: the gateway's default pool is a ULA /64; packets go through it the same way.
    val me6 = tunnel.address6()
    check("an IPv6 address from the gateway's ULA pool", me6 != null && me6.startsWith("fd")) { "$me6" }
    check("IPv6 prefix and MTU", tunnel.prefix6Len().toInt() == 64 && tunnel.mtu() >= 1280u) { "${tunnel.mtu()}" }
    check("the gateway's DNS servers (its defaults)", tunnel.dnsServers() == listOf("1.1.1.1", "2606:4700:4700::1111")) { "${tunnel.dnsServers()}" }
    val mine6 = java.net.InetAddress.getByName(me6).address
    val internet6 = java.net.InetAddress.getByName("2001:db8::1").address
    var roundTrips6 = 0
    for (size in listOf(20, 1100)) {
        val payload = ByteArray(size) { (it * 3 + size).toByte() }
        tunnel.sendPacket(udp6(mine6, internet6, payload))
        val out = uplink.recvPacket(5000u)
        if (out == null || !out.copyOfRange(8, 24).contentEquals(mine6)) continue
        uplink.sendPacket(udp6(internet6, mine6, out.copyOfRange(48, out.size)))
        val back = tunnel.recvPacket(5000u) ?: continue
        if (back.copyOfRange(48, back.size).contentEquals(payload) && back.copyOfRange(8, 24).contentEquals(internet6)) roundTrips6++
    }
    check("IPv6 packets through the tunnel and the gateway and back", roundTrips6 == 2) { "$roundTrips6 of 2" }
    check("no packet: null", tunnel.recvPacket(50u) == null)
    val stats = tunnel.stats()
    check("tunnel counters", stats.packetsOut >= 3uL && stats.packetsIn >= 3uL) { "$stats" }
    check("session event", waitFor("session") { rec.events.any { it is NodeEvent.SessionChanged && it.established } })
    check("log lines reach the listener", rec.logs.isNotEmpty())

    // Every radio at once: the platform reports WiFi and cellular; the node opens a socket for
    // each, asks the protector to bind it to the handle it was given (after protecting it), and
    // dials the gateway over both, a link each; the tunnel goes on over them.
    val wifi = NetworkInfo(101uL, "wlan0", NetworkKind.WIFI, false, true, 0u)
    val cell = NetworkInfo(202uL, "rmnet0", NetworkKind.CELLULAR, true, true, 0u)
    client.networkChanged(listOf(wifi, cell))
    check("the node asks to bind a socket to each network handle it was given", waitFor("binds") {
        protector.binds.map { it.second }.sorted() == listOf(101uL, 202uL)
    }) { "${protector.binds}" }
    check("each network has its own socket, protected before it is bound",
        protector.binds.map { it.first }.distinct().size == 2 && protector.binds.all { it.first in protector.fds }) {
        "binds ${protector.binds}, protected ${protector.fds}"
    }
    check("a link over each network", waitFor("links on wlan0 and rmnet0") {
        linkOn(client, "wlan0", "up") && linkOn(client, "rmnet0", "up")
    }) { client.status().json }
    // While the session moves onto the new links a packet may come late: any of ours coming
    // back counts (matching only the latest would stay one behind forever after a late one).
    var again = false
    val sent = mutableListOf<ByteArray>()
    for (i in 0 until 50) {
        val payload = ByteArray(64) { (it + i).toByte() }
        sent.add(payload)
        tunnel.sendPacket(udp(addr(me), internet, payload))
        val out = uplink.recvPacket(200u) ?: continue
        uplink.sendPacket(udp(internet, addr(me), out.copyOfRange(28, out.size)))
        val back = tunnel.recvPacket(2000u) ?: continue
        val got = back.copyOfRange(28, back.size)
        if (sent.any { it.contentEquals(got) }) {
            println("a packet came back over the networks' links after ${i + 1} tries")
            again = true
            break
        }
    }
    check("the tunnel carries packets over the networks' links", again)
    // Cellular lost: its link goes down at once (no dead-peer wait); WiFi's stays.
    val lost = System.currentTimeMillis()
    client.networkChanged(listOf(wifi, cell.copy(up = false)))
    check("a lost network takes its link down at once", waitFor("rmnet0 down", 2_000) { linkOn(client, "rmnet0", "down") }) {
        client.status().json
    }
    println("rmnet0 link down ${System.currentTimeMillis() - lost} ms after the report (status polled every 20 ms)")
    check("the other network's link stays up", linkOn(client, "wlan0", "up")) { client.status().json }
    check("status lists the networks", client.status().json.contains("\"name\":\"rmnet0\",\"kind\":\"cellular\",\"metered\":true,\"up\":false"))

    // Bad calls: typed exceptions, never a crash.
    throws<SkyrouteException.BadConfig>("bad config") { Node.start("[listen]\nudp = \"nope\"", "$tmp/bad", null, null) }
    throws<SkyrouteException.InvalidArgument>("empty data dir") { Node.start(local, "", null, null) }
    throws<SkyrouteException.InvalidArgument>("bad key") { client.connect("xyz", "127.0.0.1:1") }
    throws<SkyrouteException.InvalidArgument>("bad address") { client.connect(gateway.publicKey(), "nowhere") }
    throws<SkyrouteException.InvalidArgument>("oversized packet") { tunnel.sendPacket(ByteArray(70_000)) }
    throws<SkyrouteException.InvalidArgument>("empty packet") { tunnel.sendPacket(ByteArray(0)) }
    throws<SkyrouteException.InvalidArgument>("routes out of range") { client.startTunnel(gateway.publicKey(), 99u) }
    throws<SkyrouteException.InvalidArgument>("bad fd") { client.startTunnelFd(gateway.publicKey(), 1u, -1, TunFraming.PLAIN) }
    throws<SkyrouteException.InvalidArgument>("uplink of a client") { client.gatewayUplink() }
    throws<SkyrouteException.InvalidArgument>("uplink taken twice") { gateway.gatewayUplink() }
    client.networkChanged(listOf(wifi))
    tunnel.stop()
    check("tunnel down event", waitFor("tunnel down") { rec.events.any { it is NodeEvent.TunnelDown } })
    throws<SkyrouteException.Stopped>("tunnel used after stop") { tunnel.sendPacket(udp(addr(me), internet, ByteArray(4))) }
    throws<SkyrouteException.Stopped>("tunnel stopped twice") { tunnel.stop() }
    client.stop()
    throws<SkyrouteException.Stopped>("node used after stop") { client.status() }
    throws<SkyrouteException.Stopped>("node stopped twice") { client.stop() }
    gateway.stop()
    client.close(); gateway.close()
    tmp.deleteRecursively()

    println("test result: ${if (failed == 0) "ok" else "FAILED"}. $passed passed; $failed failed; 0 ignored; 0 measured; 0 filtered out")
    exitProcess(if (failed == 0) 0 else 1)
}
