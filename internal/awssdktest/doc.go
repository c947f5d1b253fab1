// Package awssdktest runs the real AWS IoT Device SDKs for JavaScript
// against Umbra in tests: the v1 SDK (npm aws-iot-device-sdk) and the v2
// SDK (aws-iot-device-sdk-v2 on aws-crt), pinned in
// testdata/aws-sdk/package.json and package-lock.json at the repository
// root and installed there by "make sdk-deps" (npm ci; make test runs it).
//
// Start runs one Node script of testdata/aws-sdk with environment and
// arguments; the script prints one JSON object per line on stdout, which
// Script.Next and Script.Await return, and reads commands, one JSON
// object per line, that Script.Send writes to its stdin. Device gives a
// script what it needs to connect as a device over mTLS (the variables
// of Device.Env). A test that cannot find node or the installed SDKs
// fails and says what to install.
//
// AWSCA issues certificates shaped like AWS IoT's (RSA 2048, common name
// "AWS IoT Certificate") for migration tests.
//
// Nothing here runs outside tests.
package awssdktest
