// The skyroute Android library: the generated uniffi bindings (../bindings/generated/kotlin),
// the VpnService integration, and the native library built per ABI by cargo-ndk:
//   cargo ndk -t arm64-v8a -t x86_64 -o android/src/main/jniLibs build --release -p skyroute-ffi
plugins {
    id("com.android.library") version "8.5.2"
    id("org.jetbrains.kotlin.android") version "2.0.20"
}

android {
    namespace = "net.skyroute.android"
    compileSdk = 34
    defaultConfig {
        minSdk = 24
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets {
        getByName("main") {
            kotlin.srcDir("../bindings/generated/kotlin")
            jniLibs.srcDir("src/main/jniLibs")
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

dependencies {
    // uniffi's Kotlin bindings call the native library through JNA.
    implementation("net.java.dev.jna:jna:5.14.0@aar")
    implementation("androidx.core:core-ktx:1.13.1")
}
