package main

// Every command is built; this file only remains until the lead removes it.
